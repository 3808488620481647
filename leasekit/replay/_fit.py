"""Fit a network model to a trace: round-trip delay, loss and loss burstiness.

What a client trace shows is the round trip (send to answer) of the attempts
that were answered, and which attempts went unanswered. From those:

* **Delay.** The observed round trips as an empirical distribution, and two
  fitted families with their parameters: a shifted exponential (``shiftexp:S,M``;
  minimum-variance unbiased estimates ``M = n/(n-1) (mean - min)``,
  ``S = min - M/n``) and a lognormal (``lognormal:MU,SIGMA``, maximum
  likelihood on the logs). ``best`` is the family with the higher
  log-likelihood. A simulator needs one delay per direction; the trace cannot
  split a round trip, so each direction gets the best family scaled by a half
  (same mean round trip; the sum of two halves varies less than one whole).
* **Loss.** ``loss_rate`` is the fraction of attempts without an answer (a
  timeout or a connection error): a request or its answer was lost, or was
  later than the attempt's timeout. The split between directions comes from
  what followed each run of unanswered attempts: a success next means none of
  them reached the server (request loss), a 412 next means one did and its
  answer was lost (answer loss). ``answer_share`` is the fraction of such runs
  that ended in a 412 (0.5 when no run could be classified).
* **Burstiness.** A Gilbert-Elliott chain over consecutive attempts of each
  lease, in its simple (Gilbert) form: the bad state loses every attempt, the
  good state none. ``ge_p_good_to_bad`` = good-to-bad transitions / attempts
  in the good state that have a successor, ``ge_p_bad_to_good`` the same from
  the bad state, so ``1 / ge_p_bad_to_good`` is the mean run of consecutive
  losses. ``loss_correlation = 1 - p - r`` is the lag-one correlation of the
  loss indicator: 0 for independent loss, towards 1 for long bursts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..distributions import Delay
from ..policy import Outcome

if TYPE_CHECKING:
    from ..sim import Network

__all__ = ["NetworkFit", "fit_network"]


@dataclass(frozen=True, slots=True)
class NetworkFit:
    """A network model fitted to a trace; see the module docstring for the estimators.

    Delays in seconds; probabilities per attempt.
    """

    attempts: int
    answered: int
    unanswered: int
    rtt: Delay
    """The observed round trips (empirical)."""
    rtt_shiftexp: Delay
    rtt_lognormal: Delay | None
    """``None`` when some round trip is 0 s (no logarithm)."""
    best: str
    """``"shiftexp"`` or ``"lognormal"``: the higher log-likelihood."""
    loglik_shiftexp: float
    loglik_lognormal: float
    loss_rate: float
    answer_share: float
    runs_classified: int
    ge_p_good_to_bad: float
    ge_p_bad_to_good: float

    @property
    def rtt_best(self) -> Delay:
        """The better-fitting family of round trips."""
        if self.best == "lognormal" and self.rtt_lognormal is not None:
            return self.rtt_lognormal
        return self.rtt_shiftexp

    @property
    def one_way_spec(self) -> str:
        """A :func:`~leasekit.distributions.parse_delay` spec for each direction:
        the best family scaled by a half."""
        best = self.rtt_best
        if best.kind == "lognormal":
            mu, sigma = best.params
            return f"lognormal:{mu - math.log(2):.6g},{sigma:.6g}"
        shift, mean = best.params
        return f"shiftexp:{shift / 2:.6g},{mean / 2:.6g}"

    @property
    def request_loss(self) -> float:
        """Estimated probability that a request is lost (see ``answer_share``)."""
        return self.loss_rate * (1 - self.answer_share)

    @property
    def answer_loss(self) -> float:
        """Estimated probability that an answer is lost after the server applied the request."""
        return self.loss_rate * self.answer_share

    @property
    def loss_correlation(self) -> float:
        """``1 - p - r``: 0 for independent loss, near 1 for long bursts (NaN if unknown)."""
        return 1 - self.ge_p_good_to_bad - self.ge_p_bad_to_good

    @property
    def mean_burst(self) -> float:
        """Mean number of consecutive unanswered attempts in a burst (``1 / r``)."""
        r = self.ge_p_bad_to_good
        return 1 / r if r > 0 else math.inf

    def to_network(self) -> Network:
        """The fit as the simulator's scenario network (``Scenario(network=...)``).

        Each direction's delay is :attr:`one_way_spec`. Answers are lost
        independently with :attr:`answer_loss`. Requests are lost by a
        Gilbert-Elliott chain with the fitted transition probabilities whose
        bad state loses the request share ``1 - answer_share`` of messages, so
        their long-run loss is :attr:`request_loss` and bursts keep their
        mean length; with no loss run to fit, requests are lost independently
        with :attr:`request_loss`. The simulator steps its chain per message
        of the direction (polls and acks too), the fit per heartbeat attempt:
        close while a worker holds its lease, which is when heartbeats flow.
        """
        from ..sim import Burst, Direction, Network

        delay = self.one_way_spec
        p, r = self.ge_p_good_to_bad, self.ge_p_bad_to_good
        if math.isfinite(p) and math.isfinite(r) and p > 0 and r > 0:
            request = Direction(
                delay=delay,
                loss=0.0,
                burst=Burst(p_enter=p, p_exit=r, loss_bad=1 - self.answer_share),
            )
        else:
            request = Direction(delay=delay, loss=self.request_loss)
        return Network(request=request, answer=Direction(delay=delay, loss=self.answer_loss))

    def to_json(self) -> dict[str, Any]:
        """The fit as plain JSON values (delay specs as strings)."""
        return {
            "attempts": self.attempts,
            "answered": self.answered,
            "unanswered": self.unanswered,
            "rtt_mean_s": self.rtt.mean,
            "rtt_shiftexp": self.rtt_shiftexp.spec,
            "rtt_lognormal": None if self.rtt_lognormal is None else self.rtt_lognormal.spec,
            "best": self.best,
            "loglik_shiftexp": self.loglik_shiftexp,
            "loglik_lognormal": _finite(self.loglik_lognormal),
            "one_way_delay": self.one_way_spec,
            "loss_rate": self.loss_rate,
            "request_loss": self.request_loss,
            "answer_loss": self.answer_loss,
            "answer_share": self.answer_share,
            "runs_classified": self.runs_classified,
            "ge_p_good_to_bad": _finite(self.ge_p_good_to_bad),
            "ge_p_bad_to_good": _finite(self.ge_p_bad_to_good),
            "loss_correlation": _finite(self.loss_correlation),
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _shiftexp(rtts: np.ndarray) -> tuple[Delay, float]:
    n = len(rtts)
    low = float(rtts.min())
    mean = float(n / (n - 1) * (rtts.mean() - low)) if n > 1 else 0.0
    shift = max(0.0, low - mean / n)
    if mean <= 0:
        return Delay("shiftexp", (shift, 0.0)), -math.inf
    loglik = float(-n * math.log(mean) - np.sum(rtts - shift) / mean)
    return Delay("shiftexp", (shift, mean)), loglik


def _lognormal(rtts: np.ndarray) -> tuple[Delay | None, float]:
    if len(rtts) < 2 or float(rtts.min()) <= 0:
        return None, -math.inf
    logs = np.log(rtts)
    mu, sigma = float(logs.mean()), float(logs.std())
    if sigma <= 0:
        return Delay("lognormal", (mu, 0.0)), -math.inf
    loglik = float(
        np.sum(
            -logs
            - math.log(sigma)
            - 0.5 * math.log(2 * math.pi)
            - (logs - mu) ** 2 / (2 * sigma**2)
        )
    )
    return Delay("lognormal", (mu, sigma)), loglik


def fit_network(attempts: pd.DataFrame) -> NetworkFit:
    """Fit delay, loss and burstiness to an attempt table (see the module docstring).

    Raises :class:`ValueError` when fewer than two attempts were answered.
    """
    answered_mask = attempts["status"].notna() & attempts["received_s"].notna()
    rtts = (
        attempts.loc[answered_mask, "received_s"] - attempts.loc[answered_mask, "sent_s"]
    ).to_numpy(dtype="float64")
    if len(rtts) < 2:
        raise ValueError(f"fit_network: need at least 2 answered attempts, got {len(rtts)}")
    shiftexp, ll_shiftexp = _shiftexp(rtts)
    lognormal, ll_lognormal = _lognormal(rtts)
    best = "lognormal" if lognormal is not None and ll_lognormal > ll_shiftexp else "shiftexp"

    transitions = np.zeros((2, 2), dtype=np.int64)  # [from lost][to lost]
    to_ok = to_412 = 0
    ordered = attempts.sort_values("sent_s", kind="stable")
    for _key, group in ordered.groupby(
        ["environment_id", "work_id", "worker"], sort=False, observed=True
    ):
        lost = group["status"].isna().to_numpy()
        outcome = group["outcome"].astype("string").to_numpy()
        if len(lost) > 1:
            np.add.at(transitions, (lost[:-1].astype(int), lost[1:].astype(int)), 1)
        # classify each run of unanswered attempts by the answer that followed it
        for position in range(1, len(lost)):
            if lost[position - 1] and not lost[position]:
                if outcome[position] == Outcome.OK.value:
                    to_ok += 1
                elif outcome[position] == Outcome.PRECONDITION_FAILED.value:
                    to_412 += 1
    good, bad = transitions[0].sum(), transitions[1].sum()
    p = float(transitions[0, 1] / good) if good else math.nan
    r = float(transitions[1, 0] / bad) if bad else math.nan
    classified = to_ok + to_412
    total = len(attempts)
    unanswered = int(attempts["status"].isna().sum())
    return NetworkFit(
        attempts=total,
        answered=len(rtts),
        unanswered=unanswered,
        rtt=Delay.empirical(rtts.tolist()),
        rtt_shiftexp=shiftexp,
        rtt_lognormal=lognormal,
        best=best,
        loglik_shiftexp=ll_shiftexp,
        loglik_lognormal=ll_lognormal,
        loss_rate=unanswered / total if total else 0.0,
        answer_share=to_412 / classified if classified else 0.5,
        runs_classified=classified,
        ge_p_good_to_bad=p,
        ge_p_bad_to_good=r,
    )
