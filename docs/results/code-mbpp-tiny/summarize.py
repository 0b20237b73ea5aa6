"""The tables of docs/code.md from the runs of run.sh: test Pass@k per method over seeds, and training curves.

Usage: python docs/results/code-mbpp-tiny/summarize.py [RUNS] [DEST] (default runs/code/mbpp-tiny, this folder); writes
summary.md and summary.csv into DEST and copies each run's metrics.csv and eval.json there. Within a seed every
method trains on the same problems in the same order (trl's sampler is seeded), so the training pass shares
compare across methods; across steps they also follow the problems' difficulty.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from heron.report import mean_ci

STATUSES = ("compile_error", "runtime_error", "timeout", "failed", "passed")
ORDER = ("warm", "heron", "coderl", "ground-truth", "weighted-sum", "flat-preference")


def main() -> None:
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/code/mbpp-tiny")
    here = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parent
    table = []
    warm: dict[str, float] = {}  # the warm start's Pass@1 per seed: each method's paired baseline
    for method in [m for m in ORDER if (runs / m).is_dir()]:
        evals, early, late, seconds, gains = [], [], [], [], []
        for seed_dir in sorted((runs / method).glob("seed*")):
            if not (seed_dir / "eval.json").is_file():
                continue
            result = json.loads((seed_dir / "eval.json").read_text())
            evals.append(result)
            if method == "warm":
                warm[seed_dir.name] = result["pass@1"]
            elif seed_dir.name in warm:
                gains.append(result["pass@1"] - warm[seed_dir.name])
            seconds.append(result["seconds"]["warm_start"] + result["seconds"]["rl"])
            keep = here / "runs" / method / seed_dir.name
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(seed_dir / "eval.json", keep / "eval.json")
            with (seed_dir / "metrics.csv").open() as f:
                rows = list(csv.DictReader(f))
            if rows:
                shutil.copy(seed_dir / "metrics.csv", keep / "metrics.csv")
                passed = np.array([float(r["return_mean"]) for r in rows])
                early.append(passed.mean())
                late.append(passed[-10:].mean())
        if not evals:
            continue
        row: dict[str, object] = {"method": "warm start only" if method == "warm" else method, "seeds": len(evals)}
        for key in ("pass@1", "pass@5"):
            row[key], row[f"{key}_ci95"] = mean_ci([e[key] for e in evals])
        row["gain@1"], row["gain@1_ci95"] = mean_ci(gains) if gains else (float("nan"), float("nan"))
        for status in evals[0]["status"]:
            row[status] = float(np.mean([e["status"][status] / (e["problems"] * e["samples"]) for e in evals]))
        if early:
            row["train_pass_all"], row["train_pass_last10"] = float(np.mean(early)), float(np.mean(late))
        row["seconds"] = float(np.mean(seconds))
        table.append(row)
    with (here / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in table for k in r)), restval="")
        writer.writeheader()
        writer.writerows(table)
    lines = [
        "| method | seeds | test Pass@1 | Pass@1 - warm start's (paired by seed) | test Pass@5 "
        "| compile / runtime / timeout / failed / passed (share) "
        "| train pass share, all steps / last 10 | s per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        mix = " / ".join(
            f"{float(r[s]):.3f}" for s in ("compile_error", "runtime_error", "timeout", "failed", "passed")
        )
        gain = "-" if np.isnan(float(r["gain@1"])) else f"{r['gain@1']:+.3f} ± {r['gain@1_ci95']:.3f}"
        train = f"{r['train_pass_all']:.3f} / {r['train_pass_last10']:.3f}" if "train_pass_all" in r else "-"
        lines.append(
            f"| {r['method']} | {r['seeds']} | {r['pass@1']:.3f} ± {r['pass@1_ci95']:.3f} | {gain} "
            f"| {r['pass@5']:.3f} ± {r['pass@5_ci95']:.3f} | {mix} | {train} | {r['seconds']:.0f} |"
        )
    (here / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
