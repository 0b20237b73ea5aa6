"""HeronLoop on its own: a user's loop learns from a ranking, state round-trips, inputs are checked."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium import spaces

import heron
from heron.checkpoints import load_tensors
from tests.envs import BANDIT_FACTORS, LEX_OPTIMUM

HIERARCHY = ["primary", "secondary"]
SMALL = {"hidden": [32, 32], "epochs": 10}
WARMUP = {"pairs": 512, "warmup_steps": 1024}


def policy_gradient(loop: heron.HeronLoop, iterations: int = 25, seed: int = 0) -> list[int]:
    """A numpy softmax policy per context, trained by REINFORCE on the loop's learned reward only."""
    rng = np.random.default_rng(seed)
    logits = np.zeros((2, 3))
    for _ in range(iterations):
        context = rng.integers(0, 2, 256)
        p = np.exp(logits[context])
        p /= p.sum(axis=1, keepdims=True)
        action = (p.cumsum(axis=1) > rng.random((256, 1))).argmax(axis=1)
        loop.observe(obs=context, action=action, factors=BANDIT_FACTORS[context, action], dones=np.ones(256, bool))
        if loop.refit_due:
            loop.refit()
        if loop.last_refit is None:  # warming up: the reward model has not been fit yet
            continue
        r = loop.reward(obs=context, action=action)
        grad = -p
        grad[np.arange(256), action] += 1
        np.add.at(logits, context, 5.0 * (r - r.mean())[:, None] * grad / len(r))  # mean gradient, step 5
    return logits.argmax(axis=1).tolist()


@pytest.mark.parametrize(("method", "optimum"), [("heron", list(LEX_OPTIMUM)), ("flat-preference", [2, 2])])
def test_own_loop_learns_what_the_teacher_ranks(method: str, optimum: list[int]) -> None:
    """The ranking's lexicographic optimum, where a weighted-sum teacher leads to the heavier action."""
    loop = heron.HeronLoop(
        HIERARCHY, spaces.Discrete(2), spaces.Discrete(3), method=method, reward_model=SMALL, comparison=WARMUP
    )
    assert policy_gradient(loop) == optimum
    assert loop.diagnostics["pairs_labeled"] > 0


def test_refit_reports_the_metrics_diagnostics() -> None:
    loop = heron.HeronLoop(HIERARCHY, spaces.Discrete(2), spaces.Discrete(3), reward_model=SMALL)
    assert loop.refit() == {}  # an empty pool has nothing to compare
    context = np.array([0, 0, 1, 1, 0, 1])
    action = np.array([0, 1, 1, 2, 2, 0])
    loop.observe(obs=context, action=action, factors=BANDIT_FACTORS[context, action], dones=np.ones(6, bool))
    stats = loop.refit()
    levels = {"decided/primary", "decided/secondary"}
    assert set(stats) == {
        "rm_accuracy",
        "rm_loss",
        "pairs_labeled",
        "unlabeled",
        "nonfinite",
        "nonfinite_steps",
        *levels,
    }
    assert stats["decided/primary"] + stats["decided/secondary"] + stats["unlabeled"] == pytest.approx(1.0)
    assert 0 < stats["pairs_labeled"] <= 4096 and loop.last_refit == 6 and not loop.refit_due


def test_state_dict_round_trips_through_a_weights_only_file(tmp_path) -> None:
    """A loop restored from its state continues exactly as the original does: same pairs, same fit."""

    def make() -> heron.HeronLoop:
        return heron.HeronLoop(HIERARCHY, spaces.Discrete(2), spaces.Discrete(3), seed=3, reward_model=SMALL)

    def feed(loop: heron.HeronLoop, seed: int) -> None:
        rng = np.random.default_rng(seed)
        context, action = rng.integers(0, 2, 64), rng.integers(0, 3, 64)
        loop.observe(obs=context, action=action, factors=BANDIT_FACTORS[context, action], dones=np.ones(64, bool))

    first = make()
    feed(first, 0)
    first.refit()
    torch.save(first.state_dict(), tmp_path / "loop.pt")
    second = make()
    second.load_state_dict(load_tensors(tmp_path / "loop.pt"))
    for loop in (first, second):
        feed(loop, 1)
    assert first.refit() == second.refit()
    obs, act = np.repeat([0, 1], 3), np.tile([0, 1, 2], 2)
    np.testing.assert_array_equal(first.reward(obs=obs, action=act), second.reward(obs=obs, action=act))
    assert second.steps == 128 and second.pool.count == 128


def test_episode_units_rank_whole_episodes_by_the_hierarchy() -> None:
    """With episode units of varying length, summed learned rewards order whole episodes by their goal totals."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 9, 40)
    dones = np.zeros(lengths.sum(), bool)
    dones[np.cumsum(lengths) - 1] = True
    obs = rng.normal(size=(len(dones), 2)).astype(np.float32)
    factors = np.stack([obs[:, 0] > 0.5, obs[:, 1]], axis=1).astype(np.float64)  # goal steps > a dense signal
    loop = heron.HeronLoop(
        [heron.Factor("goal", "max"), heron.Factor("dense", "max")],
        spaces.Box(-np.inf, np.inf, (2,)),
        spaces.Box(-1, 1, (1,)),
        reward_model={"inputs": ["obs"], "hidden": [64, 64], "epochs": 40, "lr": 3e-3},
        comparison={"unit": "episode", "pairs": 2048},
    )
    loop.observe(obs=obs, action=np.zeros((len(dones), 1)), factors=factors, dones=dones)
    assert len(loop.pool.units("episode")) == 40
    loop.refit()
    episode = np.repeat(np.arange(40), lengths)
    learned = np.bincount(episode, loop.reward(obs=obs))
    totals = np.stack([np.bincount(episode, factors[:, k]) for k in range(2)], axis=1)
    a, b = np.triu_indices(40, 1)
    truth = loop.hierarchy.compare_detailed(totals[a], totals[b])
    agree = np.sign(learned[a] - learned[b]) == truth.labels
    # Pairs the top level decides (77% here): the episode with more goal steps ranks higher (chance: 0.5).
    assert (truth.levels == 0).mean() > 0.5 and agree[truth.levels == 0].mean() > 0.85


def test_factors_as_a_dict_and_bad_inputs() -> None:
    loop = heron.HeronLoop(HIERARCHY, spaces.Box(-1, 1, (3,)), spaces.Discrete(3), n_envs=2, reward_model=SMALL)
    obs = np.zeros((4, 2, 3), np.float32)
    action = np.zeros((4, 2), np.int64)
    dones = np.zeros((4, 2), bool)
    loop.observe(
        obs=obs, action=action, factors={"primary": np.ones((4, 2)), "secondary": np.zeros((4, 2))}, dones=dones
    )
    assert loop.steps == 8 and loop.pool.fields["factors"][:4, :, 0].tolist() == [[1, 1]] * 4
    assert loop.reward(obs=obs, action=action).shape == (4, 2)
    bad = [
        ({"factors": {"primary": np.ones((4, 2))}}, "factors: 'secondary' is missing"),
        ({"action": np.full((4, 2), 3)}, r"action: values outside Discrete\(3"),
        ({"obs": np.zeros((4, 2, 5))}, r"obs: expected values of shape \(3,\)"),
        ({"dones": np.zeros((4, 3), bool)}, r"dones: expected shape \(T, 2\)"),
        ({"obs": np.zeros((5, 2, 3))}, "does not match the other inputs"),
    ]
    good = {"obs": obs, "action": action, "factors": np.zeros((4, 2, 2)), "dones": dones}
    for change, match in bad:
        with pytest.raises(heron.ConfigError, match=match):
            loop.observe(**{**good, **change})
    with pytest.raises(heron.ConfigError, match="method: the loop learns"):
        heron.HeronLoop(HIERARCHY, spaces.Discrete(2), spaces.Discrete(3), method="ground-truth")
    with pytest.raises(heron.ConfigError, match=r"comparison\.unit"):
        heron.HeronLoop(HIERARCHY, spaces.Discrete(2), spaces.Discrete(3), comparison={"unit": "decade"})
    with pytest.raises(heron.ConfigError, match="observation space: Text"):
        heron.HeronLoop(HIERARCHY, spaces.Text(4), spaces.Discrete(3))


def test_the_loop_imports_nothing_of_sb3() -> None:
    code = "import sys, heron.loop; print(any(m.startswith('stable_baselines3') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
