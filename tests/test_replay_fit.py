"""Network fit: known parameters come back from a seeded synthetic trace.

Each tolerance is four standard errors of its estimator at the sample size
used, so a correct fit fails with probability well under 1e-3 per check.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from leasekit.distributions import parse_delay
from leasekit.policy import Outcome, Result, Send
from leasekit.protocol import HeartbeatAnswer, LeaseState, WorkState
from leasekit.replay import fit_network, load_any_trace

LEASES, PER_LEASE = 12, 2000
P_ENTER, P_EXIT = 0.05, 0.4  # Gilbert: the bad state loses every attempt
ANSWER_SHARE = 0.3  # of loss runs, those whose answer (not request) was lost


def _synthetic(path: Path, rtt_spec: str, seed: int) -> None:
    from leasekit.trace import TraceHeader, TraceWriter

    rng = random.Random(seed)
    rtt = parse_delay(rtt_spec)
    ok = HeartbeatAnswer("2026-11-29T09:00:00.000001Z", True, WorkState.ACTIVE, 90)
    gone = LeaseState("2026-11-29T09:00:00.000002Z", WorkState.ACTIVE, 90)
    with TraceWriter(path, TraceHeader("fixed", source="synthetic"), origin=0.0) as writer:
        for lease in range(LEASES):
            ids = {"environment_id": "env", "work_id": f"work_{lease}", "worker": f"w{lease}"}
            bad, run_lost_answer = False, False
            for n in range(PER_LEASE):
                was_bad = bad
                bad = rng.random() < (1 - P_EXIT if bad else P_ENTER)
                sent = lease * 1e5 + n * 10.0
                send = Send(sent, 5.0, "x", None, n + 1)
                if n == 0:
                    bad = False  # every lease starts with a claim that was answered
                if bad:
                    if not was_bad:  # a new run: which direction loses it
                        run_lost_answer = rng.random() < ANSWER_SHARE
                    result = Result(Outcome.TIMEOUT, sent, sent + 5.0)
                elif run_lost_answer:
                    run_lost_answer = False
                    result = Result(
                        Outcome.PRECONDITION_FAILED,
                        sent,
                        sent + rtt.sample(rng),
                        current_state=gone,
                        status=412,
                    )
                else:
                    result = Result(Outcome.OK, sent, sent + rtt.sample(rng), answer=ok, status=200)
                writer.attempt(**ids, send=send, result=result)


@pytest.fixture(scope="module")
def shiftexp_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fit") / "shiftexp.jsonl"
    _synthetic(path, "shiftexp:0.02,0.05", seed=7)
    return path


def test_a_shifted_exponential_and_gilbert_loss_come_back(shiftexp_trace: Path) -> None:
    fit = fit_network(load_any_trace(shiftexp_trace))
    n = fit.attempts
    assert n == LEASES * PER_LEASE
    assert fit.best == "shiftexp"
    shift, mean = fit.rtt_shiftexp.params
    # the mean's standard error is M/sqrt(n); the shift's is M/n
    assert mean == pytest.approx(0.05, abs=4 * 0.05 / math.sqrt(fit.answered))
    assert shift == pytest.approx(0.02, abs=4 * 0.05 / fit.answered + 1e-9)
    # stationary loss p/(p+r); its variance is inflated by (1+rho)/(1-rho) for a
    # two-state chain with lag-one correlation rho = 1-p-r
    loss = P_ENTER / (P_ENTER + P_EXIT)
    rho = 1 - P_ENTER - P_EXIT
    se_loss = math.sqrt(loss * (1 - loss) / n * (1 + rho) / (1 - rho))
    assert fit.loss_rate == pytest.approx(loss, abs=4 * se_loss)
    # transition probabilities: binomial over the attempts in each state
    good, bad = n * (1 - loss), n * loss
    se_p = math.sqrt(P_ENTER * (1 - P_ENTER) / good)
    se_r = math.sqrt(P_EXIT * (1 - P_EXIT) / bad)
    assert fit.ge_p_good_to_bad == pytest.approx(P_ENTER, abs=4 * se_p)
    assert fit.ge_p_bad_to_good == pytest.approx(P_EXIT, abs=4 * se_r)
    assert fit.loss_correlation == pytest.approx(rho, abs=4 * (se_p + se_r))
    assert fit.mean_burst == pytest.approx(1 / P_EXIT, rel=4 * se_r / P_EXIT)
    # which direction lost: a binomial over the runs that were followed by an answer
    runs = fit.runs_classified
    assert runs > 1000
    se_share = math.sqrt(ANSWER_SHARE * (1 - ANSWER_SHARE) / runs)
    assert fit.answer_share == pytest.approx(ANSWER_SHARE, abs=4 * se_share)
    assert fit.request_loss + fit.answer_loss == pytest.approx(fit.loss_rate)
    # the specs parse, and each direction carries half the round trip on average
    one_way = parse_delay(fit.one_way_spec)
    assert 2 * one_way.mean == pytest.approx(fit.rtt_best.mean, rel=1e-5)  # 6 digits
    assert fit.rtt.kind == "empirical" and len(fit.rtt.samples) == fit.answered
    body = fit.to_json()
    assert body["best"] == "shiftexp" and body["rtt_shiftexp"].startswith("shiftexp:")


def test_a_lognormal_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "lognormal.jsonl"
    _synthetic(path, "lognormal:-3,0.5", seed=11)
    fit = fit_network(load_any_trace(path))
    assert fit.best == "lognormal" and fit.rtt_lognormal is not None
    mu, sigma = fit.rtt_lognormal.params
    # maximum likelihood on the logs: se(mu) = sigma/sqrt(n), se(sigma) = sigma/sqrt(2n)
    assert mu == pytest.approx(-3, abs=4 * 0.5 / math.sqrt(fit.answered))
    assert sigma == pytest.approx(0.5, abs=4 * 0.5 / math.sqrt(2 * fit.answered))
    assert fit.one_way_spec.startswith("lognormal:")
    one_way = parse_delay(fit.one_way_spec)
    assert 2 * one_way.mean == pytest.approx(fit.rtt_lognormal.mean, rel=1e-5)


def test_too_few_answers_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("sent_s,received_s,status\n0,1,200\n1,2,\n")
    with pytest.raises(ValueError, match="at least 2 answered"):
        fit_network(load_any_trace(path))


def test_the_fit_becomes_a_scenario_network(shiftexp_trace: Path) -> None:
    from leasekit.sim import Scenario

    fit = fit_network(load_any_trace(shiftexp_trace))
    network = fit.to_network()
    assert network.request.delay == network.answer.delay == fit.one_way_spec
    burst = network.request.burst
    assert burst is not None
    assert (burst.p_enter, burst.p_exit) == (fit.ge_p_good_to_bad, fit.ge_p_bad_to_good)
    # long-run request loss of the chain: stationary bad share times loss_bad
    stationary = burst.p_enter / (burst.p_enter + burst.p_exit)
    assert stationary * burst.loss_bad == pytest.approx(fit.request_loss, rel=0.05)
    assert network.answer.loss == pytest.approx(fit.answer_loss)
    assert Scenario(network=network).network is network  # a scenario takes it as it is
