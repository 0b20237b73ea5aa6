"""GroupReward, the HERON loop as a trl reward function: known orders learned within prompt groups,
fixed methods, batches checked, pairs drawn only among completions of one prompt."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heron.errors import ConfigError
from heron.hierarchy import Factor, Hierarchy
from heron.preferences import sample_step_pairs
from heron.trl_reward import GroupReward, as_text, weighted_sum

G = 4


def letters(prompts, completions, columns):
    """Factors of a completion: how many a's (most important), then how many b's."""
    return {
        "a": np.array([c.count("a") for c in completions], dtype=float),
        "b": np.array([c.count("b") for c in completions], dtype=float),
    }


def batches(rng: np.random.Generator, n: int, prompts: int = 8):
    for _ in range(n):
        names = [f"p{i}" for i in range(prompts) for _ in range(G)]
        yield names, ["".join(rng.choice(list("abc"), size=6)) for _ in names]


def test_learns_the_ranking_from_groups() -> None:
    reward = GroupReward(
        letters, ["a", "b"], group_size=G, comparison={"pairs": 1024}, reward_model={"hidden": [32], "epochs": 4}
    )
    rng = np.random.default_rng(0)
    for prompts, completions in batches(rng, 25):
        reward(prompts, completions)
    # More a's wins whatever the b's; with equal a's, more b's wins.
    scores = reward(["q"] * G, ["aacccc", "abbbbc", "abcccc", "bbcccc"])
    assert scores[0] > scores[1] > scores[2] > scores[3]
    row = reward.log[-1]
    assert row["decided/a"] > 0.5 and row["decided/b"] > 0.05
    assert row["factor/a"] == pytest.approx(np.mean([2, 1, 1, 0]))


def test_fixed_method_is_the_weighted_sum() -> None:
    hierarchy = Hierarchy(["a", Factor("b", direction="min")])
    reward = GroupReward(letters, hierarchy, group_size=2, method="weighted-sum", fixed=weighted_sum(hierarchy))
    assert reward(["p", "p"], ["aab", "bbb"]) == [1.0, -3.0]
    assert reward.loop is None


def test_chat_messages_are_read_as_text() -> None:
    reward = GroupReward(
        letters, ["a", "b"], group_size=2, method="weighted-sum", fixed=weighted_sum(Hierarchy(["a", "b"]), {"b": 0.0})
    )
    prompt = [{"role": "user", "content": "p"}]
    assert reward([prompt, prompt], [[{"role": "assistant", "content": "aa"}], [{"content": "b"}]]) == [2.0, 0.0]
    with pytest.raises(ConfigError, match="expected text"):
        as_text(3)


def test_batches_are_checked() -> None:
    reward = GroupReward(letters, ["a", "b"], group_size=G)
    with pytest.raises(ConfigError, match="whole groups of 4"):
        reward(["p"] * 3, ["a"] * 3)
    with pytest.raises(ConfigError, match="consecutive"):
        reward(["p", "q", "p", "q"], ["a"] * 4)
    missing = GroupReward(lambda p, c, k: {"a": np.zeros(len(c))}, ["a", "b"], group_size=2)
    with pytest.raises(ConfigError, match="factor 'b' is missing"):
        missing(["p", "p"], ["x", "y"])


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="give its reward"):
        GroupReward(letters, ["a"], group_size=2, method="coderl")
    with pytest.raises(ConfigError, match="text embedding"):
        GroupReward(letters, ["a"], group_size=2, reward_model={"inputs": ["obs", "factors"]})
    with pytest.raises(ConfigError, match="n_envs >= 2"):
        GroupReward(letters, ["a"], group_size=1)
    with pytest.raises(ConfigError, match="unit is episode"):
        GroupReward(letters, ["a"], group_size=2, comparison={"unit": "episode"})


@settings(max_examples=50, deadline=None)
@given(steps=st.integers(1, 50), envs=st.integers(2, 9), n=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_step_pairs_join_two_envs_of_one_step(steps: int, envs: int, n: int, seed: int) -> None:
    pairs = sample_step_pairs(steps, envs, n, np.random.default_rng(seed))
    assert pairs.shape == (n, 2)
    assert (pairs // envs)[:, 0].tolist() == (pairs // envs)[:, 1].tolist()  # the same step
    assert (pairs[:, 0] != pairs[:, 1]).all() and (pairs < steps * envs).all() and (pairs >= 0).all()


def test_step_pairs_need_two_envs() -> None:
    assert sample_step_pairs(5, 1, 10, np.random.default_rng(0)).shape == (0, 2)


def test_fixed_reward_reads_the_scorers_other_outputs() -> None:
    """A scorer may return arrays outside the ranking (a status): a fixed reward reads them, the ranking does not."""

    def with_status(prompts, completions, columns):
        return {
            **letters(prompts, completions, columns),
            "status": np.array(["ok" if "a" in c else "bad" for c in completions]),
        }

    reward = GroupReward(
        with_status, ["a"], group_size=2, method="status", fixed=lambda matrix, outputs: outputs["status"] == "ok"
    )
    assert reward(["p", "p"], ["ab", "bb"]) == [1.0, 0.0]
    assert reward.factor_matrix(["p"], ["aab"], {}).tolist() == [[2.0]]
