#!/usr/bin/env python3
"""Gateway overhead benchmark: Baton vs nginx vs sglang-router vs direct, on one fast mock engine.

What it measures, for every setup, on the *same* `baton-mock-engine` (OpenAI flavour, 64 tokens,
no token delay, so nearly all the time is proxy + loopback):

  * TTFT at concurrency 1: N sequential streaming requests on one keep-alive connection; TTFT is
    the time from writing the request to reading the first SSE event whose `choices` is non-empty.
    The client is a blocking raw-socket HTTP/1.1 client (no asyncio, no HTTP library) so its own
    cost is small and identical for every setup.
  * requests/s at fixed concurrency: `wrk` (C, one thread) keeps C keep-alive connections busy
    with the same streaming request for D seconds; each request reads the whole 64-token stream.

Setups are interleaved (round r runs all setups, in rotated order) and the report gives the median
over rounds, so background noise hits every setup alike.

Setups: direct (client -> mock), baton (baton-gateway --worker-urls), nginx (nginx-light,
proxy_buffering off, HTTP/1.1 keep-alive upstream), sglang (sglang-router 0.3.2, regular mode);
with --pd also baton-pd and sglang-pd (SGLang PD protocol against a mock prefill + decode pair
started with --no-rendezvous).

Everything listens on 127.0.0.1 only, runs as children of this script and is stopped on exit.
Prerequisites are set up on first use: release build of the two binaries (cargo), a venv with
sglang-router + matplotlib in .cache/bench-venv, and (as root, via apt-get) nginx-light and wrk.

Example (from the repository root):

    python3 tests/bench/gateway_overhead.py --out target/bench/gateway_overhead.json
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".cache" / "bench-venv"
SGLANG_ROUTER_VERSION = "0.3.2"
ALL_SETUPS = ["direct", "baton", "nginx", "sglang"]
PD_SETUPS = ["baton-pd", "sglang-pd"]
# Extra setups, opt-in through --setups: baton on a one-thread tokio runtime (TOKIO_WORKER_THREADS=1);
# baton-ref, another baton-gateway binary (--baton-ref), to compare two builds interleaved.
EXTRA_SETUPS = ["baton-1t", "baton-ref"]

CHILDREN: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(name: str, argv: list[str], logdir: Path, env: dict | None = None) -> subprocess.Popen:
    out = open(logdir / f"{name}.log", "wb")
    p = subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group: stopped as a unit, immune to our ^C
    )
    p.bench_name = name  # type: ignore[attr-defined]
    CHILDREN.append(p)
    return p


def stop_all() -> None:
    for p in CHILDREN:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 5
    for p in CHILDREN:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    CHILDREN.clear()


def on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


# --------------------------------------------------------------------------------------------
# Minimal blocking HTTP/1.1 client (keep-alive, chunked, SSE)


class Conn:
    """One keep-alive connection; reconnects if the server closed it."""

    def __init__(self, host: str, port: int, quickack: bool = False):
        self.addr = (host, port)
        self.quickack = quickack
        self.sock: socket.socket | None = None
        self.buf = b""

    def connect(self) -> None:
        self.close()
        s = socket.create_connection(self.addr, timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buf = s, b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _fill(self) -> None:
        if self.quickack:  # ACK every segment at once (Linux resets this flag after use)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2 :]
                return line
            self._fill()

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def stream(self, request: bytes, parse_all: bool = False):
        """Sends `request`; returns (status, ttft_s, total_s, events). TTFT is taken at the first
        SSE event whose `choices` is non-empty. `events` (the parsed JSON events) only when
        `parse_all`."""
        if self.sock is None:
            self.connect()
        t0 = time.perf_counter()
        try:
            self.sock.sendall(request)
            status_line = self._line()
        except (ConnectionError, OSError):
            self.connect()  # a stale keep-alive connection: one retry on a fresh one
            t0 = time.perf_counter()
            self.sock.sendall(request)
            status_line = self._line()
        status = int(status_line.split()[1])
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip().lower()
        chunked = headers.get(b"transfer-encoding") == b"chunked"
        length = int(headers[b"content-length"]) if b"content-length" in headers else None
        close = headers.get(b"connection") == b"close"
        ttft = None
        events: list = []
        sse = b""

        def feed(data: bytes) -> None:
            nonlocal ttft, sse
            if ttft is not None and not parse_all:
                return
            sse += data
            while True:
                i = sse.find(b"\n\n")
                if i < 0:
                    return
                ev, sse = sse[:i], sse[i + 2 :]
                for line in ev.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        if parse_all:
                            events.append("[DONE]")
                        continue
                    obj = json.loads(payload)
                    if ttft is None and obj.get("choices"):
                        ttft = time.perf_counter() - t0
                    if parse_all:
                        events.append(obj)

        if chunked:
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():  # trailers
                        pass
                    break
                feed(self._exact(size))
                self._exact(2)
        elif length is not None:
            feed(self._exact(length))
        else:  # read to EOF
            close = True
            while True:
                try:
                    self._fill()
                except ConnectionError:
                    break
                feed(self.buf)
                self.buf = b""
        total = time.perf_counter() - t0
        if close:
            self.close()
        return status, ttft, total, events


def completion_request(host: str, port: int, tokens: int) -> bytes:
    body = json.dumps(
        {
            "model": "mock-model",
            "prompt": "The quick brown fox jumps over the lazy dog",
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def validate(port: int, tokens: int) -> None:
    """One request fully parsed: tokens streamed, usage chunk, [DONE]."""
    c = Conn("127.0.0.1", port)
    status, ttft, _, events = c.stream(completion_request("127.0.0.1", port, tokens), parse_all=True)
    c.close()
    if status != 200:
        raise RuntimeError(f"status {status}")
    outs = [e for e in events if isinstance(e, dict) and e.get("choices")]
    usage = [e for e in events if isinstance(e, dict) and e.get("usage")]
    if len(outs) < tokens or not usage or events[-1] != "[DONE]" or ttft is None:
        raise RuntimeError(
            f"bad stream: {len(outs)} output events, usage={bool(usage)}, last={events[-1:]}"
        )
    n = usage[-1]["usage"].get("completion_tokens")
    if n != tokens:
        raise RuntimeError(f"usage.completion_tokens={n}, expected {tokens}")


def wait_ready(name: str, port: int, tokens: int, proc: list[subprocess.Popen], timeout=60.0):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        for p in proc:
            if p.poll() is not None:
                raise RuntimeError(f"{p.bench_name} exited with {p.returncode}")  # type: ignore
        try:
            validate(port, tokens)
            return
        except (OSError, RuntimeError, ValueError, IndexError) as e:
            last = e
            time.sleep(0.2)
    raise RuntimeError(f"{name} not ready on port {port} after {timeout}s: {last}")


# --------------------------------------------------------------------------------------------
# Measurements


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def latency_run(ports: dict[str, int], tokens: int, n: int, warmup: int,
                quickack: bool = False) -> dict[str, dict]:
    """n sequential requests per setup, interleaved request by request (direct, baton, nginx,
    direct, ...) so that background load hits every setup alike. One keep-alive connection per
    setup."""
    conns = {s: Conn("127.0.0.1", p, quickack) for s, p in ports.items()}
    reqs = {s: completion_request("127.0.0.1", p, tokens) for s, p in ports.items()}
    ttfts: dict[str, list[float]] = {s: [] for s in ports}
    totals: dict[str, list[float]] = {s: [] for s in ports}
    for i in range(warmup + n):
        for s, c in conns.items():
            status, ttft, total, _ = c.stream(reqs[s])
            if status != 200 or ttft is None:
                raise RuntimeError(f"{s}: request failed: status {status}")
            if i >= warmup:
                ttfts[s].append(ttft)
                totals[s].append(total)
    for c in conns.values():
        c.close()
    return {
        s: {
            "ttft_p50_ms": pct(ttfts[s], 50) * 1e3,
            "ttft_p90_ms": pct(ttfts[s], 90) * 1e3,
            "ttft_p99_ms": pct(ttfts[s], 99) * 1e3,
            "ttft_mean_ms": statistics.fmean(ttfts[s]) * 1e3,
            "e2e_p50_ms": pct(totals[s], 50) * 1e3,
            "e2e_p99_ms": pct(totals[s], 99) * 1e3,
        }
        for s in ports
    }


WRK_LUA = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "text/event-stream"
"""


def wrk_script(tmp: Path, tokens: int) -> Path:
    body = completion_request("127.0.0.1", 0, tokens).split(b"\r\n\r\n", 1)[1].decode()
    path = tmp / "completions.lua"
    path.write_text(WRK_LUA.format(body=body))
    return path


def throughput_run(port: int, script: Path, conc: int, duration: float) -> dict:
    out = subprocess.run(
        [
            "wrk", "-t1", f"-c{conc}", f"-d{int(round(duration))}s", "--timeout", "10s", "--latency",
            "-s", str(script), f"http://127.0.0.1:{port}/v1/completions",
        ],
        capture_output=True, text=True, check=True,
    ).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    nerr = (int(bad.group(1)) if bad else 0) + (sum(map(int, errs.groups())) if errs else 0)

    def lat(q: str) -> float | None:
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    return {"rps": float(m.group(1)), "errors": nerr, "e2e_p50_ms": lat("50"), "e2e_p99_ms": lat("99")}


# --------------------------------------------------------------------------------------------
# Setup


def ensure_prereqs(args) -> dict:
    tools = {}
    if not args.no_build:
        log("building baton-gateway and baton-mock-engine (release)...")
        subprocess.run(
            ["cargo", "build", "--release", "-q", "-p", "baton-gateway", "-p", "baton-e2e",
             "--bin", "baton-gateway", "--bin", "baton-mock-engine"],
            cwd=REPO, check=True,
        )
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release"
    tools["mock"] = str(target / "baton-mock-engine")
    tools["baton"] = str(target / "baton-gateway")
    for k in ("mock", "baton"):
        if not os.access(tools[k], os.X_OK):
            sys.exit(f"missing {tools[k]}: run without --no-build")
    wanted = set(args.setups)
    apt = [pkg for pkg, binary in (("nginx-light", "nginx"), ("wrk", "wrk"))
           if shutil.which(binary) is None and (binary == "wrk" or "nginx" in wanted)]
    if apt:
        if os.geteuid() != 0:
            sys.exit(f"please install: sudo apt-get install -y {' '.join(apt)}")
        log(f"installing {' '.join(apt)} (apt-get)...")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *apt], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    tools["nginx"] = shutil.which("nginx") or "/usr/sbin/nginx"
    py = VENV / "bin" / "python"
    need_router = wanted & {"sglang", "sglang-pd"}
    if need_router or args.plot:
        if not py.exists():
            log(f"creating venv {VENV}...")
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pkgs = []
        if need_router and subprocess.run([str(py), "-c", "import sglang_router"],
                                          capture_output=True).returncode != 0:
            pkgs.append(f"sglang-router=={SGLANG_ROUTER_VERSION}")
        if args.plot and subprocess.run([str(py), "-c", "import matplotlib"],
                                        capture_output=True).returncode != 0:
            pkgs.append("matplotlib")
        if pkgs:
            log(f"pip install {' '.join(pkgs)} (about a minute)...")
            subprocess.run([str(py), "-m", "pip", "install", "-q", *pkgs], check=True)
    tools["python"] = str(py)
    return tools


NGINX_CONF = """
worker_processes auto;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream engine {{
        server 127.0.0.1:{upstream};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_cache off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def start_setups(args, tools, tmp: Path) -> dict[str, int]:
    """Starts the mock(s) and each proxy; returns setup -> port."""
    mock_common = ["--tokens", str(args.tokens), "--token-delay-us", "0"]
    ports: dict[str, int] = {}
    mport = free_port()
    mock = spawn("mock", [tools["mock"], "--flavor", "openai", "--port", str(mport), *mock_common], tmp)
    wait_ready("mock", mport, args.tokens, [mock])
    engine = f"http://127.0.0.1:{mport}"
    if "direct" in args.setups:
        ports["direct"] = mport
    quiet = {"RUST_LOG": "warn"}
    if "baton" in args.setups:
        p = free_port()
        proc = spawn("baton", [tools["baton"], "--worker-urls", engine, "--host", "127.0.0.1",
                               "--port", str(p), "--log-level", "warn"], tmp, quiet)
        wait_ready("baton", p, args.tokens, [proc])
        ports["baton"] = p
    if "baton-ref" in args.setups:
        p = free_port()
        proc = spawn("baton-ref", [str(args.baton_ref), "--worker-urls", engine, "--host", "127.0.0.1",
                                   "--port", str(p), "--log-level", "warn"], tmp, quiet)
        wait_ready("baton-ref", p, args.tokens, [proc])
        ports["baton-ref"] = p
    if "baton-1t" in args.setups:
        p = free_port()
        proc = spawn("baton-1t", [tools["baton"], "--worker-urls", engine, "--host", "127.0.0.1",
                                  "--port", str(p), "--log-level", "warn"], tmp,
                     {**quiet, "TOKIO_WORKER_THREADS": "1"})
        wait_ready("baton-1t", p, args.tokens, [proc])
        ports["baton-1t"] = p
    if "nginx" in args.setups:
        p = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, upstream=mport, port=p))
        proc = spawn("nginx", [tools["nginx"], "-e", str(tmp / "nginx-error.log"), "-p", str(tmp),
                               "-c", str(conf), "-g", "daemon off;"], tmp)
        wait_ready("nginx", p, args.tokens, [proc])
        ports["nginx"] = p
    router_common = ["--host", "127.0.0.1", "--log-level", "warn",
                     "--prometheus-host", "127.0.0.1",
                     "--health-check-interval-secs", "3600"]
    if "sglang" in args.setups:
        p = free_port()
        proc = spawn("sglang", [tools["python"], "-m", "sglang_router.launch_router",
                                "--worker-urls", engine, "--port", str(p),
                                "--prometheus-port", str(free_port()), *router_common], tmp, quiet)
        wait_ready("sglang", p, args.tokens, [proc], timeout=120)
        ports["sglang"] = p
    if set(args.setups) & set(PD_SETUPS):
        pport, dport, bport = free_port(), free_port(), free_port()
        pre = spawn("mock-prefill", [tools["mock"], "--flavor", "sglang-prefill", "--port", str(pport),
                                     "--bootstrap-port", str(bport), "--no-rendezvous", *mock_common], tmp)
        dec = spawn("mock-decode", [tools["mock"], "--flavor", "sglang-decode", "--port", str(dport),
                                    "--no-rendezvous", *mock_common], tmp)
        pd = ["--pd-disaggregation", "--prefill", f"http://127.0.0.1:{pport}", str(bport),
              "--decode", f"http://127.0.0.1:{dport}"]
        if "baton-pd" in args.setups:
            p = free_port()
            proc = spawn("baton-pd", [tools["baton"], *pd, "--host", "127.0.0.1", "--port", str(p),
                                      "--log-level", "warn"], tmp, quiet)
            wait_ready("baton-pd", p, args.tokens, [proc, pre, dec])
            ports["baton-pd"] = p
        if "sglang-pd" in args.setups:
            p = free_port()
            proc = spawn("sglang-pd", [tools["python"], "-m", "sglang_router.launch_router", *pd,
                                       "--port", str(p), "--prometheus-port", str(free_port()),
                                       *router_common], tmp, quiet)
            wait_ready("sglang-pd", p, args.tokens, [proc, pre, dec], timeout=120)
            ports["sglang-pd"] = p
    return ports


# --------------------------------------------------------------------------------------------
# Report


def summarize(rounds: list[dict], setups: list[str], conc: int) -> list[dict]:
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    rows = []
    base = None
    for s in setups:
        lat = [r[s]["latency"] for r in rounds if s in r and "latency" in r[s]]
        thr = [r[s]["throughput"] for r in rounds if s in r and "throughput" in r[s]]
        qa = [r[s]["latency_quickack"] for r in rounds if s in r and "latency_quickack" in r[s]]
        row = {
            "setup": s,
            "ttft_p50_ms": med([x["ttft_p50_ms"] for x in lat]),
            "ttft_p99_ms": med([x["ttft_p99_ms"] for x in lat]),
            "e2e_p50_ms": med([x["e2e_p50_ms"] for x in lat]),
            "qa_ttft_p50_ms": med([x["ttft_p50_ms"] for x in qa]),
            "qa_ttft_p99_ms": med([x["ttft_p99_ms"] for x in qa]),
            "rps": med([x["rps"] for x in thr]),
            "rps_rounds": [x["rps"] for x in thr],
            "ttft_p50_rounds_ms": [x["ttft_p50_ms"] for x in lat],
            "errors": sum(x["errors"] for x in thr),
            "concurrency": conc,
        }
        if s == "direct":
            base = row
        rows.append(row)
    for row in rows:
        if base is None:
            break
        for k, b in (("added_p50_ms", "ttft_p50_ms"), ("added_p99_ms", "ttft_p99_ms"),
                     ("qa_added_p50_ms", "qa_ttft_p50_ms"), ("qa_added_p99_ms", "qa_ttft_p99_ms")):
            row[k] = (row[b] - base[b]) if row[b] is not None and base[b] is not None else None
        row["rps_ratio"] = (row["rps"] / base["rps"]) if row["rps"] and base["rps"] else None
    return rows


def table(rows: list[dict], conc: int) -> str:
    f = lambda v, fmt: "–" if v is None else format(v, fmt)  # noqa: E731
    lines = [
        f"| setup | TTFT p50 (ms) | TTFT p99 (ms) | added p50 vs direct (ms) | added p99 (ms) "
        f"| req/s at c={conc} | ratio to direct |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setup']} | {f(r['ttft_p50_ms'], '.3f')} | {f(r['ttft_p99_ms'], '.3f')} "
            f"| {f(r.get('added_p50_ms'), '+.3f')} | {f(r.get('added_p99_ms'), '+.3f')} "
            f"| {f(r['rps'], '.0f')} | {f(r.get('rps_ratio'), '.2f')} |"
        )
    if any(r.get("qa_ttft_p50_ms") is not None for r in rows):
        lines += [
            "",
            "Same, client with TCP_QUICKACK (no delayed ACKs; shows a proxy's own work without "
            "Nagle/delayed-ACK stalls):",
            "",
            "| setup | TTFT p50 (ms) | TTFT p99 (ms) | added p50 vs direct (ms) | added p99 (ms) |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['setup']} | {f(r['qa_ttft_p50_ms'], '.3f')} | {f(r['qa_ttft_p99_ms'], '.3f')} "
                f"| {f(r.get('qa_added_p50_ms'), '+.3f')} | {f(r.get('qa_added_p99_ms'), '+.3f')} |"
            )
    return "\n".join(lines)


PLOT = r"""
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
d = json.load(open(sys.argv[1]))
rows = d["summary"]
names = [r["setup"] for r in rows]
fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
x = range(len(names))
a.bar([i - 0.2 for i in x], [r["ttft_p50_ms"] for r in rows], 0.4, label="p50")
a.bar([i + 0.2 for i in x], [r["ttft_p99_ms"] for r in rows], 0.4, label="p99")
a.set_yscale("log")
a.set_xticks(list(x), names, rotation=20); a.set_ylabel("TTFT (ms, log), concurrency 1"); a.legend()
b.bar(list(x), [r["rps"] or 0 for r in rows], 0.6, color="tab:green")
b.set_xticks(list(x), names, rotation=20)
b.set_ylabel(f"req/s, {d['config']['concurrency']} streams")
fig.suptitle(f"64-token streams via proxies, mock engine ({d['machine']['cpus']} CPUs)", fontsize=10)
fig.tight_layout(); fig.savefig(sys.argv[2])
"""


# --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Gateway overhead: TTFT (concurrency 1) and req/s (concurrency C) of "
        "direct / baton / nginx / sglang-router on one fast mock engine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--out", type=Path, default=REPO / "target" / "bench" / "gateway_overhead.json",
                    help="JSON results file")
    ap.add_argument("--setups", default=",".join(ALL_SETUPS),
                    help=f"comma-separated, from {ALL_SETUPS + PD_SETUPS + EXTRA_SETUPS}")
    ap.add_argument("--pd", action="store_true", help="also run baton-pd and sglang-pd")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    ap.add_argument("--requests", type=int, default=500, help="sequential requests per latency run")
    ap.add_argument("--warmup", type=int, default=50, help="unmeasured requests before each latency run")
    ap.add_argument("--concurrency", type=int, default=32, help="concurrent streams for req/s")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per req/s run")
    ap.add_argument("--tokens", type=int, default=64, help="max_tokens per request")
    ap.add_argument("--no-build", action="store_true", help="use the existing release binaries")
    ap.add_argument("--baton-ref", type=Path,
                    help="baton-gateway binary for the baton-ref setup (say, a build of an earlier commit)")
    ap.add_argument("--no-quickack", action="store_true",
                    help="skip the second latency run whose client sets TCP_QUICKACK (no delayed ACKs)")
    ap.add_argument("--no-throughput", action="store_true", help="skip the wrk req/s runs")
    ap.add_argument("--plot", type=Path, help="also write a PNG plot (matplotlib in the venv)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temp dir with process logs")
    args = ap.parse_args()
    args.setups = [s for s in args.setups.split(",") if s]
    if args.pd:
        args.setups += [s for s in PD_SETUPS if s not in args.setups]
    bad = [s for s in args.setups if s not in ALL_SETUPS + PD_SETUPS + EXTRA_SETUPS]
    if bad:
        ap.error(f"unknown setups {bad}")
    if "baton-ref" in args.setups and not args.baton_ref:
        ap.error("the baton-ref setup needs --baton-ref PATH")

    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    tools = ensure_prereqs(args)
    tmp = Path(tempfile.mkdtemp(prefix="baton-bench-"))
    if not args.keep_logs:
        atexit.register(shutil.rmtree, tmp, True)
    log(f"starting {', '.join(args.setups)} (logs in {tmp})")
    ports = start_setups(args, tools, tmp)
    script = wrk_script(tmp, args.tokens)

    # sglang-router answers a keep-alive client's requests ~40 ms late (see the docs): count it.
    per_req = sum(0.045 if s.startswith("sglang") else 0.002 for s in args.setups)
    per_round = (args.requests + args.warmup) * (per_req + (0 if args.no_quickack else 0.002 * len(args.setups)))
    per_round += 0 if args.no_throughput else (args.duration + 0.1) * len(args.setups)
    log(f"{args.rounds} rounds x {len(args.setups)} setups; about {args.rounds * per_round / 60:.1f} min")
    rounds = []
    for r in range(args.rounds):
        k = r % len(args.setups)
        order = args.setups[k:] + args.setups[:k]
        res: dict = {s: {} for s in order}
        log(f"round {r + 1}/{args.rounds}: TTFT, {args.requests} sequential requests per setup, "
            f"interleaved...")
        lat = latency_run({s: ports[s] for s in order}, args.tokens, args.requests, args.warmup)
        qa = {} if args.no_quickack else latency_run(
            {s: ports[s] for s in order}, args.tokens, args.requests, args.warmup, quickack=True)
        for s in order:
            res[s]["latency"] = lat[s]
            if s in qa:
                res[s]["latency_quickack"] = qa[s]
        for s in order:
            msg = (f"round {r + 1}/{args.rounds} {s:>9}: TTFT p50 {lat[s]['ttft_p50_ms']:.3f} ms "
                   f"p99 {lat[s]['ttft_p99_ms']:.3f} ms")
            if s in qa:
                msg += f" (quickack client: p50 {qa[s]['ttft_p50_ms']:.3f} p99 {qa[s]['ttft_p99_ms']:.3f})"
            if not args.no_throughput:
                thr = throughput_run(ports[s], script, args.concurrency, args.duration)
                res[s]["throughput"] = thr
                msg += f", {thr['rps']:.0f} req/s" + (f" ({thr['errors']} errors)" if thr["errors"] else "")
            log(msg)
        rounds.append(res)
    stop_all()

    rows = summarize(rounds, args.setups, args.concurrency)
    md = table(rows, args.concurrency)
    def version(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return None
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                               if l.startswith("model name")), None),
            "loadavg_at_end": os.getloadavg(),
        },
        "versions": {
            "nginx": version([tools["nginx"], "-v"]),
            "wrk": version(["wrk", "-v"]),
            "sglang-router": SGLANG_ROUTER_VERSION,
            "git": subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                                  capture_output=True, text=True).stdout.strip(),
            "baton_binary_mtime": dt.datetime.fromtimestamp(
                os.path.getmtime(tools["baton"]), dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": rows,
        "rounds": rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(md)
    log(f"wrote {args.out}")
    if args.plot:
        subprocess.run([tools["python"], "-c", PLOT, str(args.out), str(args.plot)], check=True)
        log(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
