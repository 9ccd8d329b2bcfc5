"""Send a fixed set of greedy OpenAI requests to one base URL and record them; compare two recordings.

Standard library only (runs with any python3).

  python3 oai_check.py send BASE_URL OUT_DIR [--model smollm2] [--max-tokens 16] [--set full|short]
      Writes OUT_DIR/<case>.json: the request, status, response headers, raw body (SSE text for streams),
      the parsed output (text, token strings, logprobs, finish_reason, usage) and timings (TTFT, total).
  python3 oai_check.py compare DIR_A DIR_B [--logprob-tol 1e-4] [--exact]
      Compares the parsed outputs case by case: text, tokens and finish_reason must be equal; logprobs must
      agree within the tolerance (0 with --exact). Prints one line per case; exit 1 if any case differs.
"""
import argparse
import http.client
import json
import os
import sys
import time
import urllib.parse

PROMPT_CHAT = "What is the capital of France? Answer in one sentence."
PROMPT_COMPLETION = "The three primary colors are"


def cases(model, max_tokens, which):
    chat = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT_CHAT}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "logprobs": True,
        "top_logprobs": 3,
    }
    comp = {
        "model": model,
        "prompt": PROMPT_COMPLETION,
        "temperature": 0,
        "max_tokens": max_tokens,
        "logprobs": 3,
    }
    out = [
        ("chat_nonstream", "/v1/chat/completions", dict(chat)),
        ("chat_stream", "/v1/chat/completions",
         dict(chat, stream=True, stream_options={"include_usage": True})),
        ("completion_nonstream", "/v1/completions", dict(comp)),
    ]
    if which == "full":
        out.append(("completion_stream", "/v1/completions",
                    dict(comp, stream=True, stream_options={"include_usage": True})))
    return out


def post(base, path, body, timeout=900):
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    data = json.dumps(body).encode()
    t0 = time.monotonic()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json",
                                                   "Authorization": "Bearer interop-test"})
    resp = conn.getresponse()
    t_head = time.monotonic() - t0
    chunks, first_data = [], None
    while True:
        line = resp.readline()
        if not line:
            break
        if first_data is None and line.startswith(b"data: {") and b'"choices":[{' in line:
            first_data = time.monotonic() - t0
        chunks.append(line)
    total = time.monotonic() - t0
    conn.close()
    return resp.status, dict(resp.getheaders()), b"".join(chunks), t_head, first_data, total


def parse(raw, stream, chat):
    """-> dict(text, tokens, logprobs, top, finish_reason, usage, extra_keys)."""
    tokens, lps, tops, text, finish, usage, extra = [], [], [], "", None, None, set()
    if not stream:
        obj = json.loads(raw)
        extra |= set(obj) - {"id", "object", "created", "model", "choices", "usage", "system_fingerprint",
                             "service_tier", "prompt_logprobs", "prompt_token_ids", "kv_transfer_params",
                             "prompt_text", "ec_transfer_params", "metrics"}
        if obj.get("kv_transfer_params") is not None:
            extra.add("kv_transfer_params=" + json.dumps(obj["kv_transfer_params"]))
        ch = obj["choices"][0]
        finish, usage = ch.get("finish_reason"), obj.get("usage")
        if chat:
            text = ch["message"].get("content") or ""
            for e in (ch.get("logprobs") or {}).get("content") or []:
                tokens.append(e["token"]); lps.append(e["logprob"])
                tops.append([[t["token"], t["logprob"]] for t in e.get("top_logprobs", [])])
        else:
            text = ch["text"]
            lp = ch.get("logprobs") or {}
            tokens = list(lp.get("tokens") or []); lps = list(lp.get("token_logprobs") or [])
            tops = [sorted(([k, v] for k, v in (d or {}).items()), key=lambda kv: -kv[1])
                    for d in lp.get("top_logprobs") or []]
    else:
        done = False
        for line in raw.decode().splitlines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                done = True
                continue
            obj = json.loads(payload)
            if obj.get("usage"):
                usage = obj["usage"]
            for ch in obj.get("choices") or []:
                if ch.get("finish_reason"):
                    finish = ch["finish_reason"]
                if chat:
                    text += (ch.get("delta") or {}).get("content") or ""
                    for e in (ch.get("logprobs") or {}).get("content") or []:
                        tokens.append(e["token"]); lps.append(e["logprob"])
                        tops.append([[t["token"], t["logprob"]] for t in e.get("top_logprobs", [])])
                else:
                    text += ch.get("text") or ""
                    lp = ch.get("logprobs") or {}
                    tokens += lp.get("tokens") or []; lps += lp.get("token_logprobs") or []
                    tops += [sorted(([k, v] for k, v in (d or {}).items()), key=lambda kv: -kv[1])
                             for d in lp.get("top_logprobs") or []]
        if not done:
            extra.add("missing [DONE]")
    return {"text": text, "tokens": tokens, "logprobs": lps, "top": tops, "finish_reason": finish,
            "usage": usage, "extra": sorted(extra)}


def cmd_send(a):
    os.makedirs(a.out, exist_ok=True)
    ok = True
    for name, path, body in cases(a.model, a.max_tokens, a.set):
        status, headers, raw, t_head, t_first, total = post(a.base, path, body)
        stream = bool(body.get("stream"))
        rec = {"case": name, "url": a.base + path, "request": body, "status": status, "headers": headers,
               "raw": raw.decode(errors="replace"), "t_head_s": round(t_head, 3),
               "ttft_s": round(t_first, 3) if t_first is not None else None, "total_s": round(total, 3)}
        if status == 200:
            rec["parsed"] = parse(raw, stream, path.endswith("chat/completions"))
        else:
            ok = False
        json.dump(rec, open(os.path.join(a.out, name + ".json"), "w"), indent=1)
        p = rec.get("parsed", {})
        print(f"{name:22s} {status} head={t_head:.2f}s ttft={rec['ttft_s']}s total={total:.2f}s "
              f"x-request-id={headers.get('x-request-id', headers.get('X-Request-Id', '-'))} "
              f"tokens={len(p.get('tokens', []))} text={p.get('text', raw[:200])!r}", flush=True)
    return 0 if ok else 1


def cmd_compare(a):
    tol = 0.0 if a.exact else a.logprob_tol
    bad = 0
    for name in sorted(os.listdir(a.a)):
        if not name.endswith(".json"):
            continue
        pb = os.path.join(a.b, name)
        if not os.path.exists(pb):
            print(f"{name[:-5]:22s} MISSING in {a.b}"); bad += 1; continue
        ra, rb = json.load(open(os.path.join(a.a, name))), json.load(open(pb))
        x, y = ra.get("parsed"), rb.get("parsed")
        if x is None or y is None:
            print(f"{name[:-5]:22s} FAIL status {ra['status']} vs {rb['status']}"); bad += 1; continue
        problems = []
        for k in ("text", "tokens", "finish_reason"):
            if x[k] != y[k]:
                problems.append(f"{k} differs: {x[k]!r} vs {y[k]!r}")
        if len(x["logprobs"]) != len(y["logprobs"]):
            problems.append(f"logprob count {len(x['logprobs'])} vs {len(y['logprobs'])}")
        d = max([abs(p - q) for p, q in zip(x["logprobs"], y["logprobs"]) if p is not None and q is not None]
                or [0.0])
        dt = 0.0
        for ta, tb in zip(x["top"], y["top"]):
            if [t for t, _ in ta] != [t for t, _ in tb]:
                problems.append("top_logprobs tokens differ")
                break
            dt = max([dt] + [abs(p - q) for (_, p), (_, q) in zip(ta, tb)])
        if d > tol or dt > tol:
            problems.append(f"logprob diff {d:.3g} / top {dt:.3g} > {tol}")
        if (x["usage"] or {}).get("completion_tokens") != (y["usage"] or {}).get("completion_tokens"):
            problems.append(f"usage differs: {x['usage']} vs {y['usage']}")
        if x["text"] and not x["tokens"]:
            problems.append("note: no per-token logprobs returned")
        for side, p in (("A", x), ("B", y)):
            if p["extra"]:
                problems.append(f"note {side}: {p['extra']}")
        real = [p for p in problems if not p.startswith("note")]
        bad += bool(real)
        print(f"{name[:-5]:22s} {'FAIL' if real else 'OK  '} tokens={len(x['tokens'])} "
              f"max|dlogprob|={d:.3g} top={dt:.3g} text={x['text']!r}"
              + ("".join("\n    " + p for p in problems)))
    print(f"{'ALL MATCH' if not bad else str(bad) + ' CASE(S) DIFFER'}")
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send"); s.add_argument("base"); s.add_argument("out")
    s.add_argument("--model", default="smollm2"); s.add_argument("--max-tokens", type=int, default=16)
    s.add_argument("--set", default="full", choices=["full", "short"])
    c = sub.add_parser("compare"); c.add_argument("a"); c.add_argument("b")
    c.add_argument("--logprob-tol", type=float, default=1e-4); c.add_argument("--exact", action="store_true")
    a = ap.parse_args()
    sys.exit(cmd_send(a) if a.cmd == "send" else cmd_compare(a))


if __name__ == "__main__":
    main()
