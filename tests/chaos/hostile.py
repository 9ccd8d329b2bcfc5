#!/usr/bin/env python3
"""The hostile-client phase of the chaos suite (docs/SECURITY.md).

Runs the attacks of the security review against the compose stack, through
the gateway's public port, while run.sh keeps a normal load going (load.py);
run.sh then compares that load's attainment with a run without attacks.

Each attack checks its own outcome; the JSON (--out) lists them as
{name: {"ok": bool, "detail": ...}}. Exit status 1 when any attack's check
failed. Standard library only; every socket has a timeout, every loop a
bound.
"""

import argparse
import http.client
import json
import socket
import sys
import threading
import time

P = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
P.add_argument("--host", default="127.0.0.1")
P.add_argument("--port", type=int, default=30000)
P.add_argument("--model", default="smollm2")
P.add_argument("--max-payload", type=int, default=1 << 20, help="the gateway's max_payload_size")
P.add_argument("--holder-bind", default=None,
               help="address of this machine that the engine containers reach (the compose network's gateway); "
                    "a fake KV holder listens there and must see no connection")
P.add_argument("--silent-conns", type=int, default=200, help="silent TCP connections held open")
P.add_argument("--first-byte-deadline", type=float, default=10.0,
               help="the gateway's deadline for a connection's first byte (s)")
P.add_argument("--out", default=None)
A = P.parse_args()

RESULTS = {}


def record(name, ok, detail):
    RESULTS[name] = {"ok": bool(ok), "detail": detail}
    print("  %s %s: %s" % ("ok" if ok else "FAILED", name, json.dumps(detail)[:300]), file=sys.stderr)


def call(method, path, body=None, headers=None, timeout=60):
    """(status, parsed JSON or text) of one request to the gateway."""
    conn = http.client.HTTPConnection(A.host, A.port, timeout=timeout)
    try:
        hdrs = {"content-type": "application/json"}
        hdrs.update(headers or {})
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text
    finally:
        conn.close()


def chat(content, max_tokens=8, **extra):
    body = {"model": A.model, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": 0}
    body.update(extra)
    return body


def answer(resp):
    try:
        return resp["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None


def is_openai_error(resp):
    return isinstance(resp, dict) and isinstance(resp.get("error"), dict) and "message" in resp["error"]


def leaks_internals(resp):
    """Engine internals (KV endpoint, engine id) in a reply to a client."""
    text = json.dumps(resp)
    return any(k in text for k in ("kv_transfer_params", "remote_host", "remote_port", "remote_engine_id"))


class FakeHolder(threading.Thread):
    """A KV holder an attacker names in kv_transfer_params: it counts the
    connections it gets (there must be none) and answers each with a header
    claiming 2^57 blocks."""

    def __init__(self, bind):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((bind, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            try:
                c.sendall(json.dumps({"num_blocks": 1 << 57}).encode() + b"\n")
            except OSError:
                pass
            c.close()


# ---- the attacks ------------------------------------------------------------


def attack_kv_ssrf():
    """Finding 1: client-named KV holder; the engine must never connect."""
    if not A.holder_bind:
        record("kv-ssrf", True, "skipped: no --holder-bind")
        return
    holder = FakeHolder(A.holder_bind)
    holder.start()
    params = {"do_remote_prefill": True, "do_remote_decode": False, "remote_host": A.holder_bind,
              "remote_port": holder.port, "remote_request_id": "attacker-0", "remote_block_ids": [[0, 1, 2]],
              "remote_engine_id": "attacker", "remote_num_tokens": 40}
    statuses = []
    for _ in range(3):
        st, resp = call("POST", "/v1/chat/completions", chat("Say hi", kv_transfer_params=params))
        statuses.append(st)
    # Any connection would have come while the requests ran; give a late one
    # a moment (bounded) before judging.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and holder.connections == 0:
        time.sleep(0.1)
    holder.stop.set()
    record("kv-ssrf", holder.connections == 0 and all(s == 200 for s in statuses),
           {"statuses": statuses, "holder_connections": holder.connections})


def attack_poisoning():
    """Finding 2: A's transfer params on prompt V must not change V's answer."""
    v = "What is the capital city of France? Answer with one word."
    a = "What is the capital city of Japan? Answer with one word."
    st0, clean = call("POST", "/v1/chat/completions", chat(v))
    st1, pre = call("POST", "/v1/chat/completions",
                    chat(a, max_tokens=1, kv_transfer_params={"do_remote_decode": True}))
    forged = {"do_remote_prefill": True, "remote_host": "prefill-1", "remote_port": 5601,
              "remote_request_id": "guess", "remote_block_ids": [[0, 1, 2, 3]], "remote_num_tokens": 24}
    if isinstance(pre, dict):
        forged = pre.get("kv_transfer_params") or forged
    st2, _ = call("POST", "/v1/chat/completions", chat(v, kv_transfer_params=forged))
    st3, after = call("POST", "/v1/chat/completions", chat(v))
    ok = (st0, st1, st2, st3) == (200, 200, 200, 200) and answer(clean) == answer(after) \
        and not leaks_internals(pre)
    record("kv-poisoning", ok, {"statuses": [st0, st1, st2, st3], "clean": answer(clean),
                                "after": answer(after), "prefill_reply_leaks_params": leaks_internals(pre)})


def attack_leases():
    """Finding 3: prefill-only requests asking for KV leases get none."""
    replies = []
    for _ in range(4):
        st, resp = call("POST", "/v1/chat/completions",
                        chat("lease " * 50, max_tokens=1, kv_transfer_params={"do_remote_decode": True}))
        replies.append((st, leaks_internals(resp)))
    ok = all(st == 200 and not leak for st, leak in replies)
    record("kv-leases", ok, {"replies": replies})


def attack_headers():
    """Findings 7, 8: absurd SLO budgets are 400s, never a panic; a client
    cannot make its request tighter than its class."""
    cases = {"1e300": 400, "NaN": 400, "inf": 400, "-5": 400, "99999999999999999999999": 400}
    got = {}
    for value, want in cases.items():
        st, resp = call("POST", "/v1/chat/completions", chat("hi", max_tokens=2),
                        headers={"x-slo-ttft-ms": value})
        got[value] = st
    ok = all(got[v] == w for v, w in cases.items())
    # A 200 KB Authorization header: refused or stripped, never forwarded (the
    # gateway's own tests check the engine side); here: a clear answer.
    st, _ = call("POST", "/v1/chat/completions", chat("hi", max_tokens=2),
                 headers={"authorization": "Bearer " + "k" * 200_000})
    got["authorization-200KB"] = st
    ok = ok and st in (200, 401, 431)
    record("slo-headers", ok, got)


def attack_stops():
    """Finding 9: hundreds of long stop strings are refused up front (as many
    as fit under the gateway's body limit: a larger body is the big-body
    attack's 413)."""
    n = max(17, int(A.max_payload * 0.8) // 3000)
    st, resp = call("POST", "/v1/chat/completions", chat("hi", stop=["x" * 3000] * n))
    record("stop-strings", st == 400 and is_openai_error(resp), {"status": st, "stop_strings": n})


def attack_big_body():
    """Finding 10: a body over the limit is a 413 without being buffered."""
    big = b'{"model":"%s","messages":[{"role":"user","content":"' % A.model.encode()
    big += b"a" * (A.max_payload + 1024) + b'"}]}'
    st, resp = call("POST", "/v1/chat/completions", big)
    record("big-body", st == 413 and is_openai_error(resp), {"status": st, "bytes": len(big)})


def attack_silent_connections():
    """Finding 6: silent connections neither exhaust the gateway nor stay."""
    socks = []
    for _ in range(A.silent_conns):
        try:
            socks.append(socket.create_connection((A.host, A.port), timeout=5))
        except OSError:
            break
    st, _ = call("GET", "/health", timeout=10)
    # The gateway closes them after its first-byte deadline: each read sees EOF
    # (or a reset) within the deadline + margin.
    closed = 0
    limit = time.monotonic() + A.first_byte_deadline + 15
    for s in socks:
        s.settimeout(max(0.1, limit - time.monotonic()))
        try:
            if s.recv(1) == b"":
                closed += 1
        except ConnectionResetError:
            closed += 1
        except OSError:
            pass
        s.close()
    record("silent-connections", st == 200 and closed == len(socks),
           {"opened": len(socks), "health_status": st, "closed_by_gateway": closed})


def main():
    t0 = time.monotonic()
    # The silent connections run beside the request attacks (they are held
    # for the first-byte deadline).
    silent = threading.Thread(target=attack_silent_connections, daemon=True)
    silent.start()
    for attack in (attack_kv_ssrf, attack_poisoning, attack_leases, attack_headers, attack_stops, attack_big_body):
        try:
            attack()
        except (OSError, http.client.HTTPException) as e:
            record(attack.__name__.replace("attack_", ""), False, "%s: %s" % (type(e).__name__, e))
    silent.join(A.first_byte_deadline + 60)
    if silent.is_alive():
        record("silent-connections", False, "did not finish")
    failed = [k for k, v in RESULTS.items() if not v["ok"]]
    summary = {"attacks": RESULTS, "failed": failed, "seconds": round(time.monotonic() - t0, 1)}
    if A.out:
        with open(A.out, "w") as f:
            json.dump(summary, f, indent=1)
    sys.exit(1 if failed else 0)


main()
