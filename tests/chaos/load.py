#!/usr/bin/env python3
"""One chaos phase: a steady open-loop streaming load through the gateway, a
fault injected at a fixed time, and a per-request account of what happened.

Everything is timed on one clock (this process): request send / first token /
end, the fault command, and the gateway's view of its workers (its /metrics,
polled every 100 ms: worker health, breaker state, in-flight per worker).

Standard library only. Writes a JSON summary (--out) and per-request JSONL
(--records). Exit status 0 whatever happened: judging is run.sh's job.
"""

import argparse
import http.client
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time

WORDS = ("the of and to in is that it was for on are as with his they at be this from have or by one had "
         "not but what all were when we there can an your which their said if do will each about how up out "
         "them then she many some so these would other into has more her two like him see time could no make "
         "than first been its who now people my made over did down only way find use may water long little "
         "very after words called just where most know").split()

T0 = time.monotonic()


def now():
    return time.monotonic() - T0


def one_request(host, port, body, timeout, rec):
    """Streams one chat completion; fills rec with times and the outcome."""
    rec["sent"] = now()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"content-type": "application/json"})
        resp = conn.getresponse()
        rec["head"] = now()
        rec["status"] = resp.status
        if resp.status != 200:
            text = resp.read(4096).decode("utf-8", "replace")
            rec["outcome"] = "http_error"
            rec["error"] = text[:300]
            return
        chunks = 0
        done = False
        err = None
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                rec["outcome"] = "client_timeout"
                return
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                err = "unparseable SSE data: %r" % data[:100]
                continue
            if "error" in obj:
                err = json.dumps(obj["error"])[:300]
                continue
            for ch in obj.get("choices") or []:
                delta = ch.get("delta") or {}
                if delta.get("content"):
                    chunks += 1
                    if "first_token" not in rec:
                        rec["first_token"] = now()
        rec["chunks"] = chunks
        if err is not None:
            rec["outcome"] = "error_event"
            rec["error"] = err
        elif done:
            rec["outcome"] = "ok"
        else:
            rec["outcome"] = "truncated"
            rec["error"] = "stream ended without [DONE] or an error event"
    except (OSError, http.client.HTTPException) as e:
        rec["outcome"] = "client_timeout" if "timed out" in str(e) else "conn_error"
        rec["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        rec["end"] = now()
        conn.close()


METRIC_RE = re.compile(r'^baton_(worker_healthy|breaker_state|worker_in_flight|slo_store)\{([^}]*)\}\s+(\S+)')


def scrape_workers(host, port, timeout):
    """{(metric, worker): value} from the gateway's /metrics."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        m = METRIC_RE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            # slo_store gauges are keyed by their stat (healthy, backlog, ...).
            key = labels.get("stat") if m.group(1) == "slo_store" else labels.get("worker", "?")
            out[(m.group(1), key)] = float(m.group(3))
    return out


class Watcher(threading.Thread):
    """Polls the gateway's worker gauges; keeps (time, snapshot) samples.

    A failed poll is either *refused* (connection refused or reset, closed
    without an answer: the gateway is gone) or *slow* (no answer within the
    poll timeout: on a saturated machine that happens to a live gateway);
    only the first kind says the gateway died."""

    def __init__(self, host, port, timeout):
        super().__init__(daemon=True)
        self.host, self.port, self.timeout = host, port, timeout
        self.samples = []
        self.refused = 0
        self.slow = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            t = now()
            try:
                self.samples.append((t, scrape_workers(self.host, self.port, self.timeout)))
            except (TimeoutError, socket.timeout):
                self.slow += 1
                self.samples.append((t, None))
            except (OSError, http.client.HTTPException):
                self.refused += 1
                self.samples.append((t, None))
            self.stop.wait(0.1)

    def max_gap(self):
        """Longest time between two answered polls (or the edges)."""
        ok = [t for t, snap in self.samples if snap is not None]
        if not ok:
            return None
        return max(b - a for a, b in zip(ok, ok[1:])) if len(ok) > 1 else 0.0

    def latest_before(self, t):
        best = None
        for ts, snap in self.samples:
            if ts <= t and snap is not None:
                best = snap
        return best or {}

    def first_after(self, t, pred):
        for ts, snap in self.samples:
            if ts >= t and snap is not None and pred(snap):
                return ts
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:30000")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--rate", type=float, default=2.0, help="requests per second (Poisson, open loop)")
    ap.add_argument("--concurrency", type=int, default=0,
                    help="closed loop instead: this many clients, each sending its next request when the "
                         "last one ended (the load adapts to the machine's speed; no queue builds up)")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds of arrivals")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--prompt-words", type=int, default=24)
    ap.add_argument("--timeout", type=float, default=40.0, help="client-side bound per request")
    ap.add_argument("--fault-at", type=float, default=None, help="seconds after the start")
    ap.add_argument("--fault-cmd", default=None, help="shell command injecting the fault")
    ap.add_argument("--target", default=None,
                    help="worker label (gateway metrics) hit by the fault, e.g. http://decode-1:8000")
    ap.add_argument("--candidates", default=None,
                    help="WORKER=CONTAINER,...: at fault time, target the candidate with the most requests "
                         "in flight (gateway metrics); {worker} and {container} in --fault-cmd name it")
    ap.add_argument("--poll-timeout", type=float, default=5.0,
                    help="bound on one /metrics poll of the gateway (a slower answer counts as slow, "
                         "not as the gateway being down)")
    ap.add_argument("--slow-ttft", type=float, default=4.5,
                    help="a TTFT this long after the fault means the request waited out a timeout on the "
                         "faulty worker (the gateway's first-byte timeout is 5 s)")
    ap.add_argument("--name", default="phase")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--records", default=None)
    a = ap.parse_args()

    hostport = a.url.split("://", 1)[1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    port = int(port)
    rng = random.Random(a.seed)
    watcher = Watcher(host, port, a.poll_timeout)
    watcher.start()
    time.sleep(0.3)

    records, threads = [], []
    lock = threading.Lock()
    fault_t, fault_rc, fault_out, cmd, target_container = None, None, "", None, None
    counter = [0]

    def make_body(i):
        with lock:
            words = " ".join(rng.choice(WORDS) for _ in range(a.prompt_words))
        return json.dumps({
            "model": a.model,
            "messages": [{"role": "user", "content": "Request %d of %s. %s" % (i, a.name, words)}],
            "max_tokens": a.max_tokens,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        })

    def new_record():
        with lock:
            i = counter[0]
            counter[0] += 1
            rec = {"i": i}
            records.append(rec)
        return i, rec

    def client_loop():
        while now() < a.duration:
            i, rec = new_record()
            one_request(host, port, make_body(i), a.timeout, rec)

    def inject():
        nonlocal fault_t, fault_rc, fault_out, cmd, target_container
        cmd = a.fault_cmd
        if a.candidates:
            cands = [c.split("=", 1) for c in a.candidates.split(",")]
            snap = watcher.latest_before(now())
            load = {w: snap.get(("worker_in_flight", w), 0) for w, _ in cands}
            worker, container = max(cands, key=lambda wc: load[wc[0]])
            a.target, target_container = worker, container
            cmd = cmd.replace("{worker}", worker).replace("{container}", container)
        fault_t = now()
        p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30)
        fault_rc, fault_out = p.returncode, (p.stdout + p.stderr).strip()[-300:]
        print("[%s] t=%.2fs fault: %s (rc=%s, took %.2fs)" % (a.name, fault_t, cmd, fault_rc,
                                                               now() - fault_t), file=sys.stderr)

    fault_pending = a.fault_cmd is not None and a.fault_at is not None
    if a.concurrency > 0:
        for k in range(a.concurrency):
            th = threading.Thread(target=client_loop, daemon=True)
            th.start()
            threads.append(th)
            time.sleep(0.25)  # stagger the clients
        while now() < a.duration:
            if fault_pending and now() >= a.fault_at:
                inject()
                fault_pending = False
            time.sleep(0.02)
    else:
        next_arrival = 0.3
        while True:
            t = now()
            if fault_pending and t >= a.fault_at:
                inject()
                fault_pending = False
                continue
            if t >= a.duration:
                break
            if t >= next_arrival:
                i, rec = new_record()
                th = threading.Thread(target=one_request, args=(host, port, make_body(i), a.timeout, rec),
                                      daemon=True)
                th.start()
                threads.append(th)
                next_arrival += rng.expovariate(a.rate)
                continue
            wake = min(next_arrival, a.fault_at if fault_pending else 1e9, a.duration)
            time.sleep(max(0.0, min(0.05, wake - now())))
    for th in threads:
        th.join(a.timeout * 2 + 5)
    time.sleep(0.3)
    watcher.stop.set()
    watcher.join(3)

    # ---- summary -------------------------------------------------------------
    def cnt(rs, pred=lambda r: True):
        return sum(1 for r in rs if pred(r))

    ok = lambda r: r.get("outcome") == "ok"
    s = {
        "name": a.name,
        "fault_cmd": cmd,
        "fault_at_s": fault_t,
        "fault_rc": fault_rc,
        "fault_output": fault_out,
        "target": a.target,
        "target_container": target_container,
        "load": ("%d concurrent clients" % a.concurrency) if a.concurrency else ("%.2f req/s" % a.rate),
        "sent": len(records),
        "completed": cnt(records, ok),
        "failed": cnt(records, lambda r: not ok(r)),
        "outcomes": {},
        "errors": sorted({r.get("error", "")[:160] for r in records if not ok(r)}),
    }
    for r in records:
        s["outcomes"][r.get("outcome", "unknown")] = s["outcomes"].get(r.get("outcome", "unknown"), 0) + 1
    oks = [r for r in records if ok(r) and "first_token" in r]
    if oks:
        ttft = sorted(r["first_token"] - r["sent"] for r in oks)
        e2e = sorted(r["end"] - r["sent"] for r in oks)
        s["ttft_p50_s"] = round(ttft[len(ttft) // 2], 3)
        s["ttft_max_s"] = round(ttft[-1], 3)
        s["e2e_p50_s"] = round(e2e[len(e2e) // 2], 3)
        s["e2e_max_s"] = round(e2e[-1], 3)
    if fault_t is not None:
        F = fault_t
        inflight = [r for r in records if r["sent"] < F and r.get("end", 1e9) > F]
        after = [r for r in records if r["sent"] >= F]
        s["inflight_at_fault"] = len(inflight)
        s["inflight_completed"] = cnt(inflight, ok)
        s["inflight_failed"] = cnt(inflight, lambda r: not ok(r))
        fails = [r for r in inflight if not ok(r)]
        s["inflight_failed_end_after_fault_max_s"] = (
            round(max(r["end"] - F for r in fails), 3) if fails else None)
        s["after_fault_sent"] = len(after)
        s["after_fault_completed"] = cnt(after, ok)
        s["after_fault_failed"] = cnt(after, lambda r: not ok(r))
        s["after_fault_failed_sent_at_s"] = [round(r["sent"] - F, 2) for r in after if not ok(r)]
        after_ok = [r for r in after if ok(r) and "first_token" in r]
        if after_ok:
            s["after_fault_ttft_max_s"] = round(max(r["first_token"] - r["sent"] for r in after_ok), 3)
        snap = watcher.latest_before(F)
        s["gateway_inflight_before_fault"] = {w: v for (m, w), v in snap.items() if m == "worker_in_flight"}
        if a.target:
            det = watcher.first_after(F, lambda sn: sn.get(("worker_healthy", a.target), 1) == 0
                                      or sn.get(("breaker_state", a.target), 0) == 1)
            s["detect_s"] = round(det - F, 3) if det is not None else None
            # Route-around: the last request sent after the fault that failed or
            # still waited out a timeout on the faulty worker before its retry.
            slow = [r["sent"] - F for r in after
                    if not ok(r) or ("first_token" in r and r["first_token"] - r["sent"] >= a.slow_ttft)]
            s["route_around_s"] = round(max(slow), 3) if slow else 0.0
        # The shared SLO store (Redis) as the gateway saw it: when its breaker
        # opened after the fault, and when it was back with the backlog
        # flushed (within the load; null if not seen).
        down = watcher.first_after(F, lambda sn: sn.get(("slo_store", "healthy"), 1) == 0)
        if down is not None:
            s["store_down_s"] = round(down - F, 3)
            back = watcher.first_after(down, lambda sn: sn.get(("slo_store", "healthy"), 0) == 1
                                       and sn.get(("slo_store", "backlog"), 1) == 0)
            s["store_back_s"] = round(back - F, 3) if back is not None else None
    s["gateway_unreachable_samples"] = cnt(watcher.samples, lambda x: x[1] is None)
    s["gateway_refused_samples"] = watcher.refused
    s["gateway_slow_samples"] = watcher.slow
    s["gateway_samples"] = len(watcher.samples)
    gap = watcher.max_gap()
    s["gateway_max_gap_s"] = round(gap, 3) if gap is not None else None
    with open(a.out, "w") as f:
        json.dump(s, f, indent=2)
    if a.records:
        with open(a.records, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    print(json.dumps({k: s[k] for k in ("name", "sent", "completed", "failed", "outcomes")}), file=sys.stderr)


if __name__ == "__main__":
    main()
