"""The wrk HTTP benchmark client: build its command line and parse what it prints."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*([\d.]+)(us|ms|s|m|h)\s*$")
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s*([\d.]+)", re.MULTILINE)
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+(?:us|ms|s|m|h))\s*$", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")


class WrkOutputError(ValueError):
    """wrk printed something this parser does not understand."""


@dataclasses.dataclass(frozen=True)
class WrkResult:
    """One wrk run: requests done, their rate, latency percentiles (seconds), and errors."""

    requests: int
    seconds: float
    requests_per_second: float
    latency: dict[str, float]
    socket_errors: int
    non_2xx: int


def parse_duration(text: str) -> float:
    """``"186.00us"`` -> 0.000186 (seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise WrkOutputError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_output(text: str) -> WrkResult:
    """Parse wrk's report (run with ``--latency`` for the percentiles)."""
    requests = _REQUESTS.search(text)
    rate = _RATE.search(text)
    if not requests or not rate:
        raise WrkOutputError(f"no request count in wrk output: {text[-300:]!r}")
    errors = _SOCKET_ERRORS.search(text)
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests=int(requests.group(1)),
        seconds=float(requests.group(2)) * _UNITS[requests.group(3)],
        requests_per_second=float(rate.group(1)),
        latency={f"p{level}": parse_duration(value) for level, value in _PERCENTILE.findall(text)},
        socket_errors=sum(int(count) for count in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def available() -> bool:
    """True when a ``wrk`` program is on PATH."""
    return shutil.which("wrk") is not None


def wrk_argv(url: str, connections: int, seconds: int, threads: int = 1, timeout: float = 5.0) -> list[str]:
    """The wrk command line for one load point (threads never exceed connections)."""
    return ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s",
            f"--timeout={timeout:g}s", "--latency", url]


def run_wrk(argv: list[str], cpus: set[int] | None, time_limit: float) -> WrkResult:
    """Run wrk (pinned to *cpus* when given) and parse its report."""
    if cpus:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv] if shutil.which("taskset") else argv
    done = subprocess.run(argv, capture_output=True, text=True, timeout=time_limit, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise WrkOutputError(f"wrk failed with status {done.returncode}: {done.stderr.strip()[-300:]}")
    return parse_output(done.stdout)
