"""Labeling throughput: ``Hierarchy.compare`` against a per-pair pure-Python loop.

Run as ``python benchmarks/labeling.py``. Prints one table from one run.

* heron: ``Hierarchy.compare`` on N = 1,000,000 pairs of K = 6 factors (float64, then the same
  data as float32), ``scale=None`` so the standard deviations of the "std"-margin levels are
  computed over the batch on every call. One warm-up call, then the median of several repeats.
  An extra row passes ``scale`` precomputed, to show the decision tree without the std pass.
* loop: the same decision tree written as a pure-Python loop over pairs (including the pure-Python
  standard deviation of the "std" levels and the ``tolist()`` conversion of the inputs), timed on a
  smaller N and extrapolated per pair. Its labels are checked against heron's on that smaller N.
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np
from _timing import median_time

from heron.hierarchy import Factor, Hierarchy, finite_std

TARGET = 20e6  # pairs/s, float64, on 2 cores

FACTORS = [
    Factor("success", "max", 0.5, "absolute"),
    Factor("collisions", "min", 0.1, "std"),
    Factor("progress", "max", 0.25, "std"),
    Factor("energy", "min", 0.5, "absolute"),
    Factor("jerk", "min", 0.3, "std"),
    Factor("time", "min", 0.0, "absolute"),
]


def make_pairs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Factor values with frequent ties, so that pairs are decided at every level of the tree."""
    rng = np.random.default_rng(seed)

    def draw() -> np.ndarray:
        z = np.empty((n, len(FACTORS)))
        z[:, 0] = rng.integers(0, 2, n)  # binary outcome: ties half of the time
        z[:, 1] = rng.poisson(0.3, n)  # rare counts
        z[:, 2] = np.round(rng.normal(0.0, 1.0, n), 0)
        z[:, 3] = np.round(rng.gamma(2.0, 1.0, n), 0)
        z[:, 4] = np.round(rng.normal(0.0, 1.0, n), 1)
        z[:, 5] = rng.integers(0, 50, n)
        return z

    return draw(), draw()


def loop_compare(hierarchy: Hierarchy, za: np.ndarray, zb: np.ndarray) -> list[int]:
    """The decision tree, one pair at a time, in pure Python (std margins computed in Python too)."""
    a_rows = za.tolist()
    b_rows = zb.tolist()
    k = len(hierarchy)
    margins = [f.margin for f in hierarchy.factors]
    for j, f in enumerate(hierarchy.factors):
        if f.margin_mode != "std":
            continue
        values = [row[j] for row in a_rows if math.isfinite(row[j])]
        values += [row[j] for row in b_rows if math.isfinite(row[j])]
        count = max(len(values), 1)
        mean = sum(values) / count
        margins[j] *= math.sqrt(sum((v - mean) ** 2 for v in values) / count)
    signs = [f.sign for f in hierarchy.factors]
    labels = []
    for a, b in zip(a_rows, b_rows, strict=True):
        label = 0
        for j in range(k):
            d = signs[j] * (a[j] - b[j])
            if abs(d) <= margins[j]:
                continue  # tie at this level: fall through
            if math.isfinite(d):
                label = 1 if d > 0 else -1
            break  # decided, or unusable (non-finite): unlabeled
        labels.append(label)
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="pairs per heron call")
    parser.add_argument("--loop-n", type=int, default=20_000, help="pairs for the pure-Python loop")
    parser.add_argument("--repeats", type=int, default=9, help="timed heron calls (median reported)")
    parser.add_argument("--loop-repeats", type=int, default=3, help="timed loop runs (median reported)")
    args = parser.parse_args()

    hierarchy = Hierarchy(FACTORS)
    za, zb = make_pairs(args.n)

    rows = []
    for dtype in (np.float64, np.float32):
        a, b = za.astype(dtype), zb.astype(dtype)
        t = median_time(lambda a=a, b=b: hierarchy.compare(a, b), args.repeats)
        rows.append((f"heron compare, {np.dtype(dtype).name}", args.n, t, args.n / t))
    # The same call with the standard deviations passed in: the decision tree alone.
    scale = finite_std(za, zb)
    t = median_time(lambda: hierarchy.compare(za, zb, scale), args.repeats)
    rows.append(("  float64, scale passed", args.n, t, args.n / t))
    shares = hierarchy.compare_detailed(za, zb).level_shares(len(hierarchy))

    la, lb = za[: args.loop_n], zb[: args.loop_n]
    agree = loop_compare(hierarchy, la, lb) == hierarchy.compare(la, lb).tolist()
    t_loop = median_time(lambda: loop_compare(hierarchy, la, lb), args.loop_repeats)
    loop_rate = args.loop_n / t_loop
    rows.append(("pure-Python loop, float64", args.loop_n, t_loop, loop_rate))

    print(f"Hierarchy.compare throughput: K = {len(hierarchy)} factors, scale=None (std computed per call)")
    print(f"cores (os.cpu_count): {os.cpu_count()}, numpy {np.__version__}")
    print("decided per level " + " ".join(f"{s:.1%}" for s in shares[:-1]) + f", unlabeled {shares[-1]:.1%}")
    print(f"loop labels identical to heron's on {args.loop_n:,} pairs: {'yes' if agree else 'NO'}")
    print()
    print(f"{'implementation':<28} {'pairs':>10} {'median s':>10} {'Mpairs/s':>10} {'vs loop':>9}")
    for name, n, t, rate in rows:
        print(f"{name:<28} {n:>10,} {t:>10.4f} {rate / 1e6:>10.2f} {rate / loop_rate:>8.0f}x")
    print()
    rate64 = rows[0][3]
    verdict = "met" if rate64 >= TARGET else "MISSED"
    print(f"target >= {TARGET / 1e6:.0f} M pairs/s (float64): {verdict} ({rate64 / 1e6:.1f} M pairs/s)")


if __name__ == "__main__":
    main()
