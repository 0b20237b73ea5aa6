"""Reward-model update throughput: heron's batched Bradley-Terry trainer against a per-pair loop.

Run as ``python benchmarks/reward_update.py``. Prints one table from one run.

Both sides train the same network (input 4 = Pendulum observation 3 + action 1, hidden 256-256,
one scalar output, ReLU) with the same loss, ``-log sigmoid(r(winner) - r(loser))`` averaged over a
minibatch of 256 pairs, and one AdamW step (lr 1e-3, weight decay 1e-4) per minibatch, on CPU with
``torch.set_num_threads(2)``.

* heron: ``BradleyTerryTrainer.fit`` (one epoch) on a ``RewardModel`` over transition units
  (``Units`` with an index of shape (U, 1)), timed as a whole (it includes the pair-accuracy pass
  before training). Pairs are drawn as in training: each minibatch's pairs among 64 units
  (``comparison.units_per_batch``), each distinct unit scored once per minibatch; a second row
  draws independent pairs.
* loop: the pattern of the reference research code: a ``torch.nn.Sequential``
  (Linear-ReLU-Linear-ReLU-Linear), one forward per sample of each pair, the loss accumulated pair
  by pair, one backward and optimizer step per minibatch. Timed on a few minibatches.

Pairs/s counts training pairs, one forward+backward+step share each. Both sides: one warm-up,
then the median of several repeats.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
import torch.nn.functional as F
from _timing import median_time
from torch import nn

from heron.preferences import sample_pairs
from heron.reward_model import BradleyTerryTrainer, RewardModel, TrainerConfig, Units

THREADS = 2
INPUT_DIM = 4
HIDDEN = (256, 256)
BATCH = 256
LR = 1e-3
WEIGHT_DECAY = 1e-4
TARGET = 100.0  # speed-up over the loop
GROUP = 64  # units per minibatch, heron's default (comparison.units_per_batch)


def make_data(units: int, pairs: int, group: int, seed: int = 0) -> tuple[Units, torch.Tensor, torch.Tensor]:
    """Random transitions as units of one step, pairs drawn as in training, random labels."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(units, INPUT_DIM, generator=g)
    index = torch.arange(units).reshape(units, 1)
    pair_index = torch.from_numpy(sample_pairs(units, pairs, np.random.default_rng(seed), group, BATCH))
    labels = torch.where(torch.rand(pairs, generator=g) < 0.5, 1, -1)
    return Units(rows, index), pair_index, labels


def loop_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(INPUT_DIM, HIDDEN[0]),
        nn.ReLU(),
        nn.Linear(HIDDEN[0], HIDDEN[1]),
        nn.ReLU(),
        nn.Linear(HIDDEN[1], 1),
    )


def loop_train(
    model: nn.Sequential, optimizer: torch.optim.Optimizer, rows: torch.Tensor, winners: list, losers: list
) -> float:
    """One pass over the pairs, per-pair forwards, one step per minibatch of BATCH pairs."""
    losses = []
    for start in range(0, len(winners), BATCH):
        loss = 0.0
        batch = range(start, min(start + BATCH, len(winners)))
        for i in batch:
            r_w = model(rows[winners[i]].unsqueeze(0)).sum()
            r_l = model(rows[losers[i]].unsqueeze(0)).sum()
            loss = loss - F.logsigmoid(r_w - r_l)
        loss = loss / len(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return statistics.fmean(losses)


def check_same_loss(model: nn.Sequential, units: Units, pairs: torch.Tensor) -> float:
    """|loop loss - heron loss| on one minibatch, with heron's model holding the loop's weights."""
    heron = RewardModel(INPUT_DIM, HIDDEN, ensemble=1, normalize=False)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for w, b, lin in zip(heron.weights, heron.biases, linears, strict=True):
            w.copy_(lin.weight.T.unsqueeze(0))
            b.copy_(lin.bias.reshape(1, 1, -1))
        winners, losers = pairs[:BATCH, 0], pairs[:BATCH, 1]
        scores = heron.unit_scores(units, torch.cat([winners, losers]))
        heron_loss = -F.logsigmoid(scores[:, :BATCH] - scores[:, BATCH:]).mean()
        loop_loss = (
            sum(
                -F.logsigmoid(model(units.rows[w].unsqueeze(0)).sum() - model(units.rows[lo].unsqueeze(0)).sum())
                for w, lo in zip(winners.tolist(), losers.tolist(), strict=True)
            )
            / BATCH
        )
    return abs(float(heron_loss) - float(loop_loss))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50_000, help="pairs per heron fit")
    parser.add_argument("--loop-batches", type=int, default=6, help="minibatches per timed loop run")
    parser.add_argument("--units", type=int, default=10_000, help="transitions to draw pairs from (a pool)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (median reported)")
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    timings = {}
    for group in (GROUP, 0):
        units, pairs, labels = make_data(args.units, args.pairs, group)
        model = RewardModel(INPUT_DIM, HIDDEN, ensemble=1)
        trainer = BradleyTerryTrainer(
            model, TrainerConfig(lr=LR, weight_decay=WEIGHT_DECAY, epochs=1, batch_size=BATCH), seed=0
        )
        timings[group] = median_time(lambda: trainer.fit(units, pairs, labels), args.repeats)  # noqa: B023

    loop_pairs = args.loop_batches * BATCH
    mlp = loop_mlp()
    optimizer = torch.optim.AdamW(mlp.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    first = labels[:loop_pairs] > 0
    winners = torch.where(first, pairs[:loop_pairs, 0], pairs[:loop_pairs, 1]).tolist()
    losers = torch.where(first, pairs[:loop_pairs, 1], pairs[:loop_pairs, 0]).tolist()
    t_loop = median_time(lambda: loop_train(mlp, optimizer, units.rows, winners, losers), args.repeats)
    loop_rate = loop_pairs / t_loop
    diff = check_same_loss(mlp, units, pairs)

    print(
        f"Bradley-Terry reward-model update: MLP {INPUT_DIM}-{HIDDEN[0]}-{HIDDEN[1]}-1, "
        f"minibatch {BATCH} pairs, AdamW, transition units"
    )
    print(f"torch {torch.__version__}, torch.set_num_threads({torch.get_num_threads()}), CPU")
    print(f"same loss on one minibatch (same weights): |heron - loop| = {diff:.1e}")
    print()
    rows = [
        (f"heron fit, pairs in groups of {GROUP} units", args.pairs, timings[GROUP]),
        ("heron fit, independent pairs", args.pairs, timings[0]),
        ("per-pair loop (nn.Sequential)", loop_pairs, t_loop),
    ]
    print(f"{'implementation':<40} {'pairs':>8} {'median s':>10} {'pairs/s':>10} {'vs loop':>9}")
    for name, n, t in rows:
        rate = n / t
        print(f"{name:<40} {n:>8,} {t:>10.3f} {rate:>10,.0f} {rate / loop_rate:>8.0f}x")
    print()
    ratio = args.pairs / timings[GROUP] / loop_rate
    verdict = "met" if ratio >= TARGET else "MISSED"
    print(f"target >= {TARGET:.0f}x the loop with training's default pair sampling: {verdict} ({ratio:.0f}x)")


if __name__ == "__main__":
    main()
