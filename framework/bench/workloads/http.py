"""``http``: static files of 1 KiB / 64 KiB / 1 MiB at concurrency 1 / 10 / 100.

The load comes from wrk when installed (one thread; keep-alive), from the
lab's own client processes otherwise (``--client builtin``).  Per point:
requests/s, latency p50/p99, and server CPU per request (``/proc`` samples
of the server tree around the point); every repeat on a fresh server process.  Peers: ``python -m http.server``,
gunicorn (sync and gthread, with a tiny WSGI static-file app), nginx with
one worker.

``--tls`` measures the same over TLS (wrk speaks https): every strategy
beside nginx, both serving one certificate the lab makes with ``openssl``
(ECDSA P-256), so the difference between the two runs is the cost of TLS.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
import tempfile
import time

from framework.bench import session, wrk
from framework.bench.clients import latency_ms, run_clients, split
from framework.bench.config import KIB, MIB, BenchConfig
from framework.bench.processes import RunningServer
from framework.bench.report import Column, WorkloadReport, recommendation
from framework.bench.targets import Context
from framework.registry import server_targets

COLUMNS = [
    Column("req_per_s", "req/s", 0),
    Column("p50_ms", "p50 ms", 3),
    Column("p99_ms", "p99 ms", 3),
    Column("cpu_us_per_req", "CPU µs/req", 1),
    Column("errors", "errors", 0),
]
MAX_CLIENT_PROCESSES = 4


def size_label(size: int) -> str:
    """``1024`` -> ``1 KiB``."""
    if size % MIB == 0:
        return f"{size // MIB} MiB"
    if size % KIB == 0:
        return f"{size // KIB} KiB"
    return f"{size} B"


def file_name(size: int) -> str:
    """The name of the served file of *size* bytes."""
    return f"file-{size}.bin"


def make_root(sizes: tuple[int, ...]) -> str:
    """A directory readable by anyone (nginx workers drop privileges) with one file per size."""
    root = tempfile.mkdtemp(prefix="forkthread-bench-http-")
    os.chmod(root, 0o755)
    for size in sizes:
        path = os.path.join(root, file_name(size))
        with open(path, "wb") as file:
            file.write(os.urandom(size))
        os.chmod(path, 0o644)
    with open(os.path.join(root, "index.html"), "w") as file:
        file.write("<!doctype html><title>forkthread bench</title>\n")
    os.chmod(os.path.join(root, "index.html"), 0o644)
    return root


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed ECDSA certificate for 127.0.0.1 and its key, made with ``openssl``, in *directory*."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    os.chmod(key, 0o644)  # nginx workers drop privileges: a lab key for loopback only
    return cert, key


def _builtin_point(server: RunningServer, path: str, connections: int, duration: float) -> dict[str, float | None]:
    request = f"GET {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nUser-Agent: forkthread-bench\r\n\r\n"
    specs = [{"kind": "rr", "host": server.host, "port": server.port, "connections": share, "protocol": "http",
              "request": request, "duration": duration, "max_requests": 5_000_000}
             for share in split(connections, min(connections, MAX_CLIENT_PROCESSES))]
    load = run_clients(specs, time_limit=duration + 30.0)
    elapsed = max((client.get("elapsed", 0.0) for client in load.per_client), default=0.0)
    return {"requests": float(load.done), "req_per_s": load.done / elapsed if elapsed > 0 else None,
            **latency_ms(load.latencies), "errors": float(load.errors)}


def _wrk_point(config: BenchConfig, server: RunningServer, path: str, connections: int,
               duration: float) -> dict[str, float | None]:
    seconds = max(1, math.ceil(duration))
    scheme = "https" if config.tls else "http"
    argv = wrk.wrk_argv(f"{scheme}://{server.host}:{server.port}{path}", connections, seconds)
    result = wrk.run_wrk(argv, config.client_cpus, time_limit=seconds + 30.0)
    p50, p99 = result.latency.get("p50"), result.latency.get("p99")
    return {"requests": float(result.requests), "req_per_s": result.requests_per_second,
            "p50_ms": None if p50 is None else p50 * 1e3, "p99_ms": None if p99 is None else p99 * 1e3,
            "errors": float(result.socket_errors + result.non_2xx)}


def measure_point(config: BenchConfig, server: RunningServer, path: str, connections: int,
                  duration: float, use_wrk: bool) -> dict[str, float | None]:
    """One load point; adds the server's CPU per request."""
    before = server.cpu_seconds()
    if use_wrk:
        sample = _wrk_point(config, server, path, connections, duration)
    else:
        sample = _builtin_point(server, path, connections, duration)
    time.sleep(0.05)
    cpu = server.cpu_seconds() - before
    requests = sample.get("requests") or 0.0
    sample["cpu_s"] = cpu
    sample["cpu_us_per_req"] = cpu / requests * 1e6 if requests else None
    return sample


def run(config: BenchConfig) -> WorkloadReport:
    """Measure the forkthread http server under every strategy, and the HTTP peers."""
    scale = config.scale
    use_wrk = config.client == "wrk" or (config.client == "auto" and wrk.available())
    client = "wrk (1 thread, keep-alive)" if use_wrk else "the lab's built-in client (keep-alive)"
    seconds = max(1, math.ceil(scale.duration)) if use_wrk else scale.duration
    report = WorkloadReport(
        name="http", title="http: static files",
        description=(f"GET of a {', '.join(size_label(size) for size in scale.sizes)} file at concurrency"
                     f" {', '.join(map(str, scale.concurrency))}, {seconds:g}"
                     f" s per point, load from {client}.  CPU per request is the server tree's CPU (from /proc)"
                     f" over the point divided by requests.  Every run on a fresh server, the servers"
                     f" taking turns within each repeat; median of {scale.http_repeat} runs, (min-max)."),
        columns=COLUMNS, ratio_metric="req_per_s", params=["size", "connections"])
    if config.tls:
        report.name, report.title = "http-tls", "http over TLS: static files"
        report.description += "  Over TLS: every server serves the same self-signed ECDSA P-256 certificate."
        if not use_wrk or shutil.which("openssl") is None:
            report.notes.append("--tls needs wrk and openssl: nothing measured")
            return report
    if not use_wrk:
        why = "--client builtin" if config.client == "builtin" else "wrk is not installed"
        report.notes.append(f"{why}: load from the built-in client (slower than wrk; it may be the bottleneck)")
    root = make_root(scale.sizes)
    context = Context(server="http", protocol="http", server_options=["--root", root], root=root)
    try:
        if config.tls:
            keys = tempfile.mkdtemp(prefix="forkthread-bench-tls-")  # not under the served root
            os.chmod(keys, 0o755)
            context.tls_cert, context.tls_key = make_certificate(keys)
            context.server_options += ["--tls-cert", context.tls_cert, "--tls-key", context.tls_key]
        has_http = "http" in server_targets()
        targets = []
        for target in session.runnable(config, report, context):
            if target.kind == "forkthread" and not has_http:
                session.skip(config, report, target, "no forkthread 'http' server is registered")
            else:
                targets.append(target)
        _measure_interleaved(config, report, targets, context, use_wrk)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if context.tls_cert:
            shutil.rmtree(os.path.dirname(context.tls_cert), ignore_errors=True)
    from framework.bench.plots import plot_http

    plot_http(config, report)
    report.summary = recommendation(report)
    return report


def _measure_interleaved(config: BenchConfig, report: WorkloadReport, targets: list[session.Target],
                         context: Context, use_wrk: bool) -> None:
    """Each repeat of each point measures every server in turn, each time on a fresh server process.

    So a burst of other work on the machine lands on one repeat of every
    server rather than on every repeat of one, and the medians stay comparable.
    """
    scale = config.scale
    points = [(size, connections) for size in scale.sizes for connections in scale.concurrency]
    samples: dict[str, dict[tuple[int, int], list[dict[str, float | None]]]] = {
        target.name: {point: [] for point in points} for target in targets}
    failed: set[str] = set()
    for size, connections in points:
        path = "/" + file_name(size)
        measure = functools.partial(measure_point, config, path=path, connections=connections,
                                    duration=scale.duration, use_wrk=use_wrk)
        # Warm-up: the built-in client speaks no TLS, wrk does.
        warm_up = (functools.partial(measure_point, config, path=path, connections=1, duration=0.1, use_wrk=True)
                   if config.tls else functools.partial(_builtin_point, path=path, connections=1, duration=0.1))
        for repeat in range(scale.http_repeat):
            for target in targets:
                if target.name in failed:
                    continue
                label = f"http: {target.name:<18} {size_label(size):>7} C={connections:<4} run {repeat + 1}/" \
                        f"{scale.http_repeat}"
                try:
                    sample = session.fresh_sample(config, target, context, label, measure, warm_up)
                except session.MEASUREMENT_ERRORS as exc:
                    session.skip(config, report, target, f"failed: {exc}")
                    failed.add(target.name)
                    continue
                samples[target.name][(size, connections)].append(sample)
    for target in targets:  # rows grouped by server, in the usual order
        for (size, connections), taken in samples[target.name].items():
            if taken and target.name not in failed:
                session.add_row(report, target, {"size": size_label(size), "connections": connections}, taken)
