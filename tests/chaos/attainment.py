#!/usr/bin/env python3
"""Compares the SLO attainment of two load.py runs (per-request JSONL):
a baseline and the same load under attack (the hostile phase).

The SLO is derived from the baseline, so the check does not depend on how
fast this machine is: TTFT <= FACTOR x the baseline's p90 TTFT and TPOT <=
FACTOR x its p90 TPOT (floors keep a very quiet baseline from making the
budget meaninglessly tight). A request attains when it completed ("ok") and
met both. Prints one JSON object; exit 1 when the attacked run's attainment
is below the baseline's minus the tolerance: --tolerance, or one request of
the attacked run when that is more (a 20 s run on 2 cores has ~10-20
requests, so one request is the resolution of the measurement). The attacks
that look like normal requests (poisoning, leases, SSRF) are real inference
on the same CPUs, so they may cost that one request; anything more is a
regression.
"""
import argparse
import json
import sys

P = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
P.add_argument("baseline")
P.add_argument("attacked")
P.add_argument("--factor", type=float, default=2.0)
P.add_argument("--ttft-floor", type=float, default=1.0, help="seconds")
P.add_argument("--tpot-floor", type=float, default=0.1, help="seconds")
P.add_argument("--tolerance", type=float, default=0.05)
A = P.parse_args()


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def ttft(r):
    return r["first_token"] - r["sent"] if "first_token" in r else None


def tpot(r):
    if "first_token" not in r or r.get("chunks", 0) < 2:
        return 0.0
    return (r["end"] - r["first_token"]) / (r["chunks"] - 1)


def p90(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.9 * len(xs)))] if xs else None


base, att = load(A.baseline), load(A.attacked)
ok_base = [r for r in base if r.get("outcome") == "ok" and ttft(r) is not None]
if not ok_base:
    print(json.dumps({"error": "baseline has no completed request"}))
    sys.exit(1)
ttft_slo = max(A.ttft_floor, A.factor * p90([ttft(r) for r in ok_base]))
tpot_slo = max(A.tpot_floor, A.factor * p90([tpot(r) for r in ok_base]))


def attainment(rs):
    good = sum(1 for r in rs if r.get("outcome") == "ok" and ttft(r) is not None
               and ttft(r) <= ttft_slo and tpot(r) <= tpot_slo)
    return good / len(rs) if rs else 0.0


out = {"ttft_slo_s": round(ttft_slo, 3), "tpot_slo_s": round(tpot_slo, 4),
       "baseline": {"requests": len(base), "attainment": round(attainment(base), 3)},
       "attacked": {"requests": len(att), "attainment": round(attainment(att), 3)}}
tolerance = max(A.tolerance, 1.0 / len(att)) if att else A.tolerance
out["tolerance"] = round(tolerance, 3)
out["unchanged"] = attainment(att) >= attainment(base) - tolerance - 1e-9
print(json.dumps(out))
sys.exit(0 if out["unchanged"] else 1)
