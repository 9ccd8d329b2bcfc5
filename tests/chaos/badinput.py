#!/usr/bin/env python3
"""Bad input through the whole stack (client → gateway → engines).

Each case sends one hostile request over a raw socket and checks the status
code and how fast it came. Slow-drip (slowloris) clients run alongside while
normal requests keep being served. Prints one line per case and writes a JSON
report; exits 1 if any case got an unexpected answer.

Standard library only.
"""

import argparse
import json
import socket
import sys
import threading
import time

P = argparse.ArgumentParser()
P.add_argument("--host", default="127.0.0.1")
P.add_argument("--port", type=int, default=30000)
P.add_argument("--model", default="smollm2")
P.add_argument("--max-payload", type=int, default=1 << 20, help="the gateway's max_payload_size")
P.add_argument("--context-words", type=int, default=3000,
               help="words in the over-long prompt (beyond the engines' --max-model-len)")
P.add_argument("--skip-engine-cases", action="store_true",
               help="mock engines: skip the cases the engine must refuse (context, model name)")
P.add_argument("--slow-clients", type=int, default=20, help="slowloris connections of each kind")
P.add_argument("--header-timeout", type=float, default=30.0, help="gateway's header read timeout")
P.add_argument("--body-timeout", type=float, default=60.0, help="gateway's body read timeout")
P.add_argument("--out", default=None)
A = P.parse_args()


def raw_request(payload, timeout=30.0, read_limit=1 << 16):
    """Sends bytes, returns (status or None, head+body text, seconds)."""
    t0 = time.monotonic()
    s = socket.create_connection((A.host, A.port), timeout=timeout)
    try:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (413) and close before reading everything
        data = b""
        while len(data) < read_limit:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                cl = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                if cl and len(body) >= int(cl[0].split(b":")[1]):
                    break
                if b"transfer-encoding: chunked" in head.lower() and body.endswith(b"0\r\n\r\n"):
                    break
    finally:
        s.close()
    dt = time.monotonic() - t0
    status = None
    if data.startswith(b"HTTP/1."):
        try:
            status = int(data.split(b" ", 2)[1])
        except (IndexError, ValueError):
            pass
    return status, data.decode("utf-8", "replace"), dt


def post(path, body, extra_headers=b"", content_type=b"application/json"):
    head = (b"POST " + path + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: " + content_type +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n" +
            extra_headers + b"\r\n")
    return head + body


def chat(content, **kw):
    b = {"model": A.model, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    b.update(kw)
    return json.dumps(b).encode()


RESULTS = []
FAIL = []


def case(name, payload, expect, max_s=5.0, need_json_error=True, timeout=30.0):
    status, text, dt = raw_request(payload, timeout=timeout)
    ok = status in expect and dt <= max_s
    if ok and need_json_error and status >= 400:
        body = text.partition("\r\n\r\n")[2]
        ok = '"error"' in body and '"message"' in body
    line = {"case": name, "status": status, "expected": sorted(expect, key=str), "seconds": round(dt, 3), "ok": ok,
            "answer": text.partition("\r\n\r\n")[2][:200]}
    RESULTS.append(line)
    print("  %-42s %s in %.3fs %s" % (name, status, dt, "ok" if ok else "UNEXPECTED: " + text[:300]))
    if not ok:
        FAIL.append(name)


# ---- slow-drip clients (started first, checked last) ------------------------
SLOW = []


def drip(kind, idx, head, dripped, limit):
    """Sends `head` at once, then `dripped` one byte per recv timeout (2 s), until the gateway answers or
    closes, or `limit` + 20 s pass; records what happened and how long it took."""
    rec = {"kind": kind, "idx": idx}
    t0 = time.monotonic()
    s = socket.create_connection((A.host, A.port), timeout=5)
    s.settimeout(2)
    try:
        if head:
            s.sendall(head)
        for b in dripped:
            s.sendall(bytes([b]))
            try:
                d = s.recv(4096)
                rec["answer"] = d[:60].decode("utf-8", "replace")
                break  # closed (b"") or answered
            except socket.timeout:
                pass
            if time.monotonic() - t0 > limit + 20:
                rec["answer"] = "still open"
                break
    except OSError as e:
        rec["answer"] = "closed: %s" % type(e).__name__
    rec["seconds"] = round(time.monotonic() - t0, 2)
    s.close()
    SLOW.append(rec)


def slow_headers(idx):
    """Never finishes the head: one header byte at a time."""
    drip("headers", idx, b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Drip: " + b"a" * 10000,
         A.header_timeout)


def slow_body(idx):
    """Sends the head, then the body one byte at a time (it announces more than it sends)."""
    body = chat("slow body " * 20)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body) + 100000).encode() + b"\r\n\r\n")
    drip("body", idx, head, body, A.body_timeout)


def main():
    t_start = time.monotonic()
    slow = [threading.Thread(target=slow_headers, args=(i,), daemon=True) for i in range(A.slow_clients)]
    slow += [threading.Thread(target=slow_body, args=(i,), daemon=True) for i in range(A.slow_clients)]
    for t in slow:
        t.start()
    print("  (%d slow-header and %d slow-body clients dripping one byte/s)" % (A.slow_clients, A.slow_clients))
    time.sleep(1)

    C = b"/v1/chat/completions"
    case("malformed JSON", post(C, b'{"model": "x", "messages": [{"role": "user", "cont'), {400})
    case("not a JSON object", post(C, b"[1, 2, 3]"), {400})
    case("empty body", post(C, b""), {400})
    case("messages is a string", post(C, b'{"model":"m","messages":"hi"}'), {400})
    case("max_tokens is a string", post(C, chat("hi", max_tokens="ten")), {400})
    case("max_tokens negative", post(C, chat("hi", max_tokens=-5)), {400})
    case("max_tokens = 0 (refused before any prefill)", post(C, chat("hi", max_tokens=0)), {400})
    case("temperature above 2", post(C, chat("hi", temperature=5)), {400})
    case("top_p = 0", post(C, chat("hi", top_p=0)), {400})
    case("temperature is a list", post(C, chat("hi", temperature=[1])), {400})
    case("stream is a string", post(C, chat("hi", stream="yes")), {400})
    case("n = 0", post(C, chat("hi", n=0)), {400})
    case("model is a number", post(C, b'{"model":7,"messages":[{"role":"user","content":"hi"}]}'), {400})
    case("completions: prompt missing", post(b"/v1/completions", b'{"model":"m","max_tokens":2}'), {400})
    case("completions: prompt is an object", post(b"/v1/completions", b'{"model":"m","prompt":{"a":1}}'), {400})
    case("invalid UTF-8 in a string", post(C, b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe\xc3"}]}'),
         {400})
    case("lone UTF-16 surrogate escape", post(C, b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}'),
         {400})
    case("nesting 100000 deep", post(C, b"[" * 100000 + b"]" * 100000), {400})
    case("number out of range", post(C, b'{"model":"m","messages":[],"max_tokens":1e999}'), {400})
    big = b'{"model":"m","messages":[{"role":"user","content":"' + b"a" * (2 * A.max_payload) + b'"}]}'
    case("huge body (2x limit, Content-Length)", post(C, big), {413})
    chunked = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    piece = b"a" * 65536
    for _ in range((2 * A.max_payload) // len(piece)):
        chunked += b"%x\r\n" % len(piece) + piece + b"\r\n"
    chunked += b"0\r\n\r\n"
    case("huge body (2x limit, chunked)", chunked, {413})
    case("header section of 600 KB", b"GET /health HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"b" * 600000 + b"\r\n\r\n",
         {431, 400}, need_json_error=False)
    case("garbage request line", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 not http\r\n\r\n", {400, None},
         need_json_error=False)
    case("unknown route", b"GET /v2/nothing HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n", {404})
    case("GET on a POST route", b"GET /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
         {405, 404})
    words = " ".join(["hello"] * A.context_words)
    engine_cases = not A.skip_engine_cases
    engine_cases and case("prompt beyond the model's context", post(C, chat(words)), {400}, max_s=15.0)
    engine_cases and case("prompt beyond context (stream)", post(C, chat(words, stream=True)), {400}, max_s=15.0)
    engine_cases and case("completions: prompt beyond context", post(b"/v1/completions", json.dumps(
        {"model": A.model, "prompt": words, "max_tokens": 4}).encode()), {400}, max_s=15.0)
    engine_cases and case("unknown model name", post(C, json.dumps(
        {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()),
         {400, 404})

    # The service keeps working while the slow clients hang on.
    status, text, dt = raw_request(post(C, chat("Say hi", max_tokens=8)), timeout=30)
    ok = status == 200
    RESULTS.append({"case": "valid request during slowloris", "status": status, "seconds": round(dt, 3), "ok": ok})
    print("  %-42s %s in %.3fs %s" % ("valid request during slowloris", status, dt, "ok" if ok else "UNEXPECTED"))
    if not ok:
        FAIL.append("valid request during slowloris")

    for t in slow:
        t.join(max(1.0, A.body_timeout + 25 - (time.monotonic() - t_start)))
    for kind, limit in (("headers", A.header_timeout), ("body", A.body_timeout)):
        rs = [r for r in SLOW if r["kind"] == kind]
        secs = [r["seconds"] for r in rs]
        closed = [r for r in rs if r.get("answer") != "still open"]
        ok = len(rs) == A.slow_clients and len(closed) == len(rs) and max(secs) <= limit + 5
        answers = sorted({r.get("answer", "")[:40] for r in rs})
        line = {"case": "slowloris (%s), %d clients" % (kind, A.slow_clients), "closed": len(closed),
                "seconds_min": min(secs) if secs else None, "seconds_max": max(secs) if secs else None,
                "answers": answers, "ok": ok}
        RESULTS.append(line)
        print("  %-42s %d/%d cut off after %.1f-%.1fs (%s) %s" % (
            line["case"], len(closed), len(rs), min(secs or [0]), max(secs or [0]), answers,
            "ok" if ok else "UNEXPECTED"))
        if not ok:
            FAIL.append(line["case"])
    if A.out:
        with open(A.out, "w") as f:
            json.dump({"results": RESULTS, "failed": FAIL}, f, indent=2)
    if FAIL:
        print("bad-input cases failed: %s" % ", ".join(FAIL))
        sys.exit(1)


main()
