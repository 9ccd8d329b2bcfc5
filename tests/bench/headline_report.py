#!/usr/bin/env python3
"""Tables and plots for the headline runs (tests/bench/headline_2gpu.sh).

Reads the `<setup>-<workload>.json` reports (baton-bench sweeps saved with --save-records) from the folders or
.tgz files given, recomputes every request's TTFT/TPOT verdict under each SLO tier (a rejected, failed or
timed-out request is a miss), and prints per workload and tier: attainment per rate, and goodput per GPU =
the highest rate with >= 90% attainment, linearly interpolated between the last passing and the first failing
rate (DistServe), divided by the 2 GPUs every setup uses. With --plot DIR it writes one PNG per workload and
tier (attainment vs rate, one line per setup; matplotlib from .cache/bench-venv or the system).

    python3 tests/bench/headline_report.py tests/bench/results/gpu-h200-2026-11-27b/*.tgz --plot docs/img

Runs labelled `<setup>-<workload>-<tier>` (tests/bench/slo_chunking_1gpu.sh: each tier run on its own, with its
class sent) are scored only under that tier, and their latency percentiles and the gateway's prediction error
(`x-baton-predicted`) are printed per rate (--details).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

TIERS = {"interactive": (0.5, 0.030), "standard": (2.0, 0.100), "strict": (4.0, 0.020)}
GPUS = 2
TARGET = 0.9
SETUPS = ["colocated", "disaggregated", "slo_aware"]


def key(label: str) -> tuple[str, str, str | None]:
    """(setup, workload, tier the run was sent as, if the label names one)."""
    parts = label.split("-")
    if len(parts) >= 3 and parts[-1] in TIERS:
        return parts[0], "-".join(parts[1:-1]), parts[-1]
    return parts[0], "-".join(parts[1:]), None


def load(paths: list[Path]) -> dict[tuple[str, str, str | None], dict]:
    reports = {}
    for p in paths:
        if p.suffix in (".tgz", ".gz"):
            with tarfile.open(p) as t:
                for m in t.getmembers():
                    if m.name.endswith(".json"):
                        d = json.load(t.extractfile(m))
                        reports[key(d["label"])] = d
        else:
            for f in (p.glob("*.json") if p.is_dir() else [p]):
                d = json.load(open(f))
                if "label" in d:
                    reports[key(d["label"])] = d
    return reports


def good(rec: dict, ttft: float, tpot: float) -> bool:
    if rec.get("outcome", {}).get("kind") != "ok" or rec.get("ttft_s") is None:
        return False
    n = rec.get("output_tokens") or 0
    t = (rec["latency_s"] - rec["ttft_s"]) / (n - 1) if n > 1 else 0.0
    return rec["ttft_s"] <= ttft and t <= tpot


def attainment(run: dict, tier: str) -> float:
    recs = run["records"]
    return sum(good(r, *TIERS[tier]) for r in recs) / max(1, len(recs))


def goodput(points: list[tuple[float, float]]) -> tuple[float, bool]:
    """(rate, bounded): highest passing rate, interpolated toward the first failing one."""
    points = sorted(points)
    best, bounded = 0.0, False
    for i, (rate, a) in enumerate(points):
        if a >= TARGET:
            best = rate
            continue
        bounded = True
        if i > 0 and points[i - 1][1] >= TARGET:
            r0, a0 = points[i - 1]
            best = r0 + (rate - r0) * (a0 - TARGET) / (a0 - a)
        break
    return best, bounded


def pct(stats: dict | None, q: str) -> str:
    return "–" if not stats else f"{stats[q]:.0f}"


def details(d: dict) -> None:
    """TTFT/TPOT p50/p90 and the median prediction error per rate of one run."""
    for r in d["runs"]:
        m = r["summary"]
        print(
            f"|   {r['rate']:g} req/s | TTFT p50/p90 {pct(m.get('ttft_ms'), 'p50')}/{pct(m.get('ttft_ms'), 'p90')} ms"
            f" | TPOT p50/p90 {pct(m.get('tpot_ms'), 'p50')}/{pct(m.get('tpot_ms'), 'p90')} ms"
            f" | prediction error p50 TTFT {pct(m.get('ttft_prediction_error_pct'), 'p50')}%"
            f" TPOT {pct(m.get('tpot_prediction_error_pct'), 'p50')}% |"
        )


def main() -> None:
    global GPUS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--plot", type=Path, help="write attainment-vs-rate PNGs here")
    ap.add_argument("--gpus", type=int, default=GPUS, help="GPUs every setup used (goodput is per GPU)")
    ap.add_argument("--details", action="store_true", help="latency percentiles and prediction error per rate")
    args = ap.parse_args()
    GPUS = args.gpus
    reports = load(args.inputs)
    if not reports:
        sys.exit("no reports found")
    order = ["summarization", "chat", "mix"]
    workloads = sorted({w for _, w, _ in reports}, key=lambda w: (order.index(w) if w in order else 9, w))
    setups = SETUPS + sorted({s for s, _, _ in reports} - set(SETUPS))
    curves = defaultdict(dict)
    for w in workloads:
        for tier in TIERS:
            runs = {s: d for (s, ww, t), d in reports.items() if ww == w and t in (None, tier)}
            if not runs:
                continue
            print(f"\n### {w}, {tier} tier (TTFT {TIERS[tier][0]} s, TPOT {TIERS[tier][1] * 1e3:.0f} ms)\n")
            rates = sorted({r["rate"] for d in runs.values() for r in d["runs"]})
            print("| setup | " + " | ".join(f"{r:g} req/s" for r in rates) + " | goodput/GPU (req/s) |")
            print("|---|" + "---:|" * (len(rates) + 1))
            for s in setups:
                d = runs.get(s)
                if not d:
                    continue
                pts = [(r["rate"], attainment(r, tier)) for r in d["runs"]]
                curves[(w, tier)][s] = pts
                g, bounded = goodput(pts)
                cells = {r: f"{100 * a:.0f}%" for r, a in pts}
                rej = {r["rate"]: r["summary"].get("rejected", 0) for r in d["runs"]}
                cells = {r: c + (f" ({rej[r]} rej.)" if rej.get(r) else "") for r, c in cells.items()}
                gtxt = f"{g / GPUS:.2f}" + ("" if bounded else " (≥, no rate failed)")
                print(f"| {s} | " + " | ".join(cells.get(r, "–") for r in rates) + f" | {gtxt} |")
                if args.details:
                    details(d)
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            sys.exit("--plot needs matplotlib")
        args.plot.mkdir(parents=True, exist_ok=True)
        for (w, tier), by_setup in curves.items():
            fig, ax = plt.subplots(figsize=(5, 3.2))
            for s, pts in by_setup.items():
                ax.plot([r / GPUS for r, _ in pts], [100 * a for _, a in pts], marker="o", label=s)
            ax.axhline(100 * TARGET, color="grey", ls="--", lw=0.8)
            ax.set_xlabel("request rate per GPU (req/s)")
            ax.set_ylabel("SLO attainment (%)")
            ax.set_title(f"{w}, {tier} SLO ({GPUS} GPU, Llama-3-8B shape)", fontsize=9)
            ax.set_ylim(0, 105)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(args.plot / f"headline-{w}-{tier}.png", dpi=110)
            plt.close(fig)


if __name__ == "__main__":
    main()
