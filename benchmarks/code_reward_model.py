"""Which inputs should the code reward model read? Held-out pair accuracy on real sampled programs.

Run as ``python benchmarks/code_reward_model.py [--model DIR]``. Prints one table from one run.

Completions are sampled from a code policy (``--model``: a directory ``heron code train`` wrote;
by default a tiny GPT-2 warm-started on reference solutions, as in ``configs/code-mbpp-tiny.yaml``)
on MBPP-like training problems, ``--samples`` per problem at temperature 1, and run in the sandbox:
the factors are those ``heron code train`` ranks (``passed > pass_rate > runs > compiles >
similarity``). The problems are split in two; a :class:`heron.HeronLoop` (the one inside
``GroupReward``: pairs of completions of the same problem, a refit per call) is fit on the first
part, ``--refits`` times, with each choice of ``reward_model.inputs``:

* ``factors``: the five factors;
* ``obs``: the completion's MiniLM embedding (``TextEmbedding``, 384 dimensions) alone;
* ``obs, factors``: both.

Reported: accuracy on every pair of completions of the same held-out problem that the ranking
labels (a tie in score counts one half), overall and by the level that decided the pair, and the
fit's seconds per refit.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from gymnasium import spaces

from heron.code.tasks import mbpp_like
from heron.code.train import CodeTrainConfig, ProgramScorer, WarmStartConfig, reference_body, warm_start
from heron.hierarchy import finite_std
from heron.loop import HeronLoop
from heron.models import generate, load_causal_lm
from heron.trl_reward import TextEmbedding

INPUTS = (("factors",), ("obs",), ("obs", "factors"))


def policy(model: str | None, seed: int) -> tuple[object, object]:
    """The sampling policy: a saved model, or the default config's warm-started tiny GPT-2."""
    if model is not None:
        return load_causal_lm(model)
    config = CodeTrainConfig()
    train = mbpp_like(256, split="train", seed=0)
    test = mbpp_like(100, split="test", seed=0)
    texts = [t for p in [*train, *test] for t in (p.prompt, reference_body(p))]
    tiny = config.tiny
    lm, tokenizer = load_causal_lm(
        "tiny",
        texts=texts,
        layers=tiny.layers,
        width=tiny.width,
        heads=tiny.heads,
        vocab_size=tiny.vocab_size,
        seed=seed,
    )
    warm_start(lm, tokenizer, train, WarmStartConfig(steps=300, batch_size=16, lr=3e-3), seed)
    return lm, tokenizer


def within_pairs(groups: int, size: int) -> np.ndarray:
    """Every pair (i < j) of completions of the same problem, as flat indices, shape (P, 2)."""
    i, j = np.triu_indices(size, k=1)
    base = (np.arange(groups) * size)[:, None]
    return np.stack([(base + i).reshape(-1), (base + j).reshape(-1)], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model directory (default: warm-start a tiny GPT-2)")
    parser.add_argument("--problems", type=int, default=96)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--refits", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    config = CodeTrainConfig()
    ranking = config.ranking
    problems = mbpp_like(args.problems, split="train", seed=1)
    lm, tokenizer = policy(args.model, args.seed)
    started = time.perf_counter()
    texts = generate(
        lm, tokenizer, [p.prompt for p in problems], samples=args.samples, temperature=1.0, max_new_tokens=64
    )
    completions = [t for group in texts for t in group]
    flat_problems = np.repeat(np.arange(len(problems)), args.samples)
    prompts = [problems[i].prompt for i in flat_problems]
    scorer = ProgramScorer(problems)
    factors_by_name = scorer(prompts, completions, {"problem": flat_problems})
    z = np.stack([factors_by_name[n] for n in ranking.names], axis=1)
    sampled = time.perf_counter() - started
    embedding = TextEmbedding()(prompts, completions)

    g, s = len(problems), args.samples
    fit = g * 2 // 3
    pairs = within_pairs(g - fit, s) + fit * s
    labels = ranking.compare_detailed(z[pairs[:, 0]], z[pairs[:, 1]], finite_std(z[: fit * s]))
    keep = labels.labels != 0
    pairs, label, level = pairs[keep], labels.labels[keep], labels.levels[keep]
    print(f"{len(completions)} completions of {g} problems ({sampled:.0f} s to sample and run)")
    print("  mean factors: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(ranking.names, z.mean(axis=0), strict=True)))
    mix = {k.removeprefix("status/"): v for k, v in scorer.history[-1].items() if k.startswith("status/")}
    print("  statuses: " + ", ".join(f"{k} {v:.2f}" for k, v in mix.items()))
    print(f"held-out: {g - fit} problems, {len(pairs)} labeled pairs; decided at each level:")
    print("  " + ", ".join(f"{n} {int((level == i).sum())}" for i, n in enumerate(ranking.names)))
    print()
    header = "| inputs | held-out accuracy | " + " | ".join(ranking.names) + " | s / refit |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for inputs in INPUTS:
        loop = HeronLoop(
            ranking,
            spaces.Box(-np.inf, np.inf, (embedding.shape[1],), np.float32),
            spaces.Box(-1.0, 1.0, (1,), np.float32),
            seed=args.seed,
            n_envs=s,
            reward_model={**config.reward_model.model_dump(), "inputs": inputs},
            comparison={"unit": "transition", "pair_within": "step", "pool_steps": fit},
        )
        loop.observe(
            obs=embedding[: fit * s].reshape(fit, s, -1),
            action=None,
            factors=z[: fit * s].reshape(fit, s, -1),
            dones=np.ones((fit, s)),
        )
        tic = time.perf_counter()
        for _ in range(args.refits):
            loop.refit()
        per_refit = (time.perf_counter() - tic) / args.refits
        score = loop.reward(obs=embedding, factors=z).reshape(-1)
        gap = (score[pairs[:, 0]] - score[pairs[:, 1]]) * label
        right = (gap > 0) + 0.5 * (gap == 0)
        by_level = [right[level == i].mean() if (level == i).any() else np.nan for i in range(len(ranking))]
        cells = " | ".join("-" if np.isnan(a) else f"{a:.3f}" for a in by_level)
        print(f"| {', '.join(inputs)} | {right.mean():.3f} | {cells} | {per_refit:.3f} |")


if __name__ == "__main__":
    main()
