"""Experiments on top of heron.train: multi-seed sweeps, summaries, plots."""
