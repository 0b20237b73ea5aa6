"""The tables of docs/lm.md, "Online results": held-out figures before and after training, mean and 95% CI over seeds.

    python docs/results/lm-online/aggregate.py runs/lm-online/tiny docs/results/lm-online/tiny.md

reads ``RUNS/<method>/seed<k>/eval.json`` and writes a Markdown table (and the same as CSV next to it).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from heron.report import mean_ci

FIGURES = (
    "correct",
    "complete",
    "coherent",
    "factor/correctness",
    "factor/helpfulness",
    "factor/coherence",
    "factor/complexity",
    "factor/verbosity",
    "length",
)


def main(runs: Path, out: Path) -> None:
    rows = []
    for method_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        evals = [json.loads(p.read_text()) for p in sorted(method_dir.glob("seed*/eval.json"))]
        if not evals:
            continue
        row: dict[str, object] = {"method": method_dir.name, "seeds": len(evals)}
        for figure in FIGURES:
            for when in ("before", "after"):
                mean, ci = mean_ci([e[when][figure] for e in evals])
                row[f"{figure} {when}"] = mean
                row[f"{figure} {when} ci95"] = ci
        row["steps"] = evals[0]["steps"]
        row["wall_clock_s"] = sum(e["wall_clock_s"] for e in evals) / len(evals)
        rows.append(row)
    with out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = ["held-out figure", *(f"{r['method']} ({r['seeds']} seeds)" for r in rows)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for figure in FIGURES:
        cells = [
            f"{r[f'{figure} before']:.3f} -> **{r[f'{figure} after']:.3f}** ± {r[f'{figure} after ci95']:.3f}"
            for r in rows
        ]
        lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    lines.append(
        "| steps, mean wall-clock s | " + " | ".join(f"{r['steps']}, {r['wall_clock_s']:.0f}" for r in rows) + " |"
    )
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
