"""What the machine is: CPUs, kernel, Python, memory, and the versions of the peer programs."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time

from framework import __version__
from framework.bench.procfs import mem_total_kib
from framework.subinterpreters import gil_state


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def tool_version(argv: list[str]) -> str | None:
    """The first line a program prints for its version option (None when not installed)."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else None


def _python_package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe_machine() -> dict[str, object]:
    """A JSON-ready description of this machine and the software measured on it."""
    load1, load5, _ = os.getloadavg()
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gib": round(mem_total_kib() / (1 << 20), 1),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "gil": gil_state(),
        "python_executable": sys.executable,
        "forkthread": __version__,
        "load_average": f"{load1:.2f} {load5:.2f}",
        "wrk": tool_version(["wrk", "--version"]),
        "nginx": tool_version(["nginx", "-v"]),
        "gunicorn": _python_package_version("gunicorn"),
        "matplotlib": _python_package_version("matplotlib"),
    }


def machine_summary(machine: dict[str, object]) -> str:
    """One line for the terminal and the report header."""
    return (
        f"{machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory_gib']} GiB, {machine['kernel']},"
        f" {machine['python']} (GIL {machine.get('gil', 'enabled')}),"
        f" load average {machine['load_average']} at the start"
        + (f", {machine['load_average_end']} at the end" if machine.get("load_average_end") else "")
    )
