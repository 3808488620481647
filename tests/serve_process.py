"""Start ``leasekit serve`` as a real subprocess on an ephemeral loopback port."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

URL = re.compile(r"http://127\.0\.0\.1:\d+")


class ServeProcess:
    """A ``leasekit serve --port 0 ...`` process; ``url`` is read from its first line.
    Its log (standard error) goes to ``log_path``."""

    def __init__(self, *args: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leasekit.cli", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        found = URL.search(first)
        if found is None:
            self.proc.kill()
            raise RuntimeError(
                f"serve did not print its URL: {first!r}; log: {log_path.read_text()}"
            )
        self.url = found.group(0)
        self.banner = [first]

    def read_banner_line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.banner.append(line)
        return line

    def kill(self) -> None:
        """kill -9: no clean-up of any kind."""
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def interrupt(self) -> int:
        """Ctrl-C; returns the exit code."""
        self.proc.send_signal(2)
        code = self.proc.wait(20)
        self._log.close()
        return code

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
