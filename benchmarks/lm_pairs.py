"""Pair labeling throughput of ``heron.lm.pairs_from_ratings`` on a 100k-row rating table.

Run as ``python benchmarks/lm_pairs.py``. Prints one table from one run.

The table has HelpSteer's columns: a prompt and a response string per row and the five attributes
as Python ints 0-4 (what ``read_ratings`` returns for a JSONL file), rows shuffled so that a
prompt's responses are not adjacent. Three group-size mixes (responses per prompt):

* ``helpsteer``: 1-4, uniform (about 2.5 per prompt; HelpSteer2 has about 2);
* ``generator``: 4 per prompt (``generate_ratings``'s default);
* ``wide``: 1-16, uniform (about 8.5 per prompt).

Timed: ``pairs_from_ratings(columns, "correctness>helpfulness>coherence:0.5std>verbosity:min")``
from the columns in memory (grouping, pair enumeration, one ``compare_detailed`` call, orienting)
with file reading excluded. One warm-up call, then the median and the best of several (the best
shows what the code does when the shared cores are free). "pairs/s" counts the pairs compared
(every two responses to a prompt). The two last columns time turning the labeled
pairs into trl columns (``Pairs.columns()``) and into row dicts (``Pairs.rows``), which are per-row
Python objects by nature.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from _timing import median_time

from heron.lm.pairs import pairs_from_ratings

ROWS = 100_000
TARGET = 1e6  # pairs compared per second, on 2 cores
RANKING = "correctness>helpfulness>coherence:0.5std>verbosity:min"
MIXES = {"helpsteer": (1, 4), "generator": (4, 4), "wide": (1, 16)}


def rating_table(rows: int, sizes: tuple[int, int], seed: int = 0) -> dict[str, list]:
    """HelpSteer columns with group sizes drawn uniformly from ``sizes`` (inclusive), rows shuffled."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(sizes[0], sizes[1] + 1, rows)
    group = np.repeat(np.arange(rows), counts)[:rows]
    rng.shuffle(group)
    columns: dict[str, list] = {
        "prompt": [f"prompt {g}: what is {g} * 7?" for g in group.tolist()],
        "response": [f"response {i}" for i in range(rows)],
    }
    for name in ("helpfulness", "correctness", "coherence", "complexity", "verbosity"):
        columns[name] = rng.integers(0, 5, rows).tolist()
    return columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print(f"{args.rows} rated responses, ranking {RANKING!r}, {os.cpu_count()} cores")
    print(
        f"{'mix':<10} {'per prompt':>10} {'compared':>9} {'labeled':>8} {'median s':>8} {'pairs/s':>9} "
        f"{'best s':>7} {'best pairs/s':>12} {'columns s':>9} {'rows s':>7}"
    )
    for mix, sizes in MIXES.items():
        table = rating_table(args.rows, sizes)
        result = pairs_from_ratings(table, RANKING)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            pairs_from_ratings(table, RANKING)
            times.append(time.perf_counter() - start)
        columns_s = median_time(result.columns, 3)
        rows_s = median_time(lambda result=result: result.rows, 3)
        compared = result.report.compared
        median, best = statistics.median(times), min(times)
        print(
            f"{mix:<10} {args.rows / result.report.prompts:>10.2f} {compared:>9} {result.report.pairs:>8} "
            f"{median:>8.3f} {compared / median:>9.3g} {best:>7.3f} {compared / best:>12.3g} "
            f"{columns_s:>9.3f} {rows_s:>7.3f}" + ("" if compared / median >= TARGET else "  median below target")
        )


if __name__ == "__main__":
    main()
