#!/usr/bin/env python3
"""Tables and plots for the headline runs (tests/bench/headline_2gpu.sh).

Reads the `<setup>-<workload>.json` reports (baton-bench sweeps saved with --save-records) from the folders or
.tgz files given, recomputes every request's TTFT/TPOT verdict under each SLO tier (a rejected, failed or
timed-out request is a miss), and prints per workload and tier: attainment per rate, and goodput per GPU =
the highest rate with >= 90% attainment, linearly interpolated between the last passing and the first failing
rate (DistServe), divided by the 2 GPUs every setup uses. With --plot DIR it writes one PNG per workload and
tier (attainment vs rate, one line per setup; matplotlib from .cache/bench-venv or the system).

    python3 tests/bench/headline_report.py tests/bench/results/gpu-h200-2026-11-27b/*.tgz --plot docs/img
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

TIERS = {"interactive": (0.5, 0.030), "standard": (2.0, 0.100)}
GPUS = 2
TARGET = 0.9
SETUPS = ["colocated", "disaggregated", "slo_aware"]


def load(paths: list[Path]) -> dict[tuple[str, str], dict]:
    reports = {}
    for p in paths:
        if p.suffix in (".tgz", ".gz"):
            with tarfile.open(p) as t:
                for m in t.getmembers():
                    if m.name.endswith(".json"):
                        d = json.load(t.extractfile(m))
                        reports[tuple(d["label"].split("-", 1))] = d
        else:
            for f in (p.glob("*.json") if p.is_dir() else [p]):
                d = json.load(open(f))
                if "label" in d:
                    reports[tuple(d["label"].split("-", 1))] = d
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--plot", type=Path, help="write attainment-vs-rate PNGs here")
    args = ap.parse_args()
    reports = load(args.inputs)
    if not reports:
        sys.exit("no reports found")
    workloads = sorted({w for _, w in reports}, key=["summarization", "chat", "mix"].index)
    curves = defaultdict(dict)
    for w in workloads:
        for tier in TIERS:
            print(f"\n### {w}, {tier} tier (TTFT {TIERS[tier][0]} s, TPOT {TIERS[tier][1] * 1e3:.0f} ms)\n")
            rates = sorted({r["rate"] for (s, ww), d in reports.items() if ww == w for r in d["runs"]})
            print("| setup | " + " | ".join(f"{r:g} req/s" for r in rates) + " | goodput/GPU (req/s) |")
            print("|---|" + "---:|" * (len(rates) + 1))
            for s in SETUPS:
                d = reports.get((s, w))
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
            ax.set_title(f"{w}, {tier} SLO (2x H200, Llama-3-8B shape)", fontsize=9)
            ax.set_ylim(0, 105)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(args.plot / f"headline-{w}-{tier}.png", dpi=110)
            plt.close(fig)


if __name__ == "__main__":
    main()
