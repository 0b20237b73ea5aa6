"""Experiments on top of heron.train: multi-seed sweeps, summaries, plots."""

from heron.experiments.runner import CompareResult, compare

__all__ = ["CompareResult", "compare"]
