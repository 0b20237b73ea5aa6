"""The HERON loop on its own: observe experience, label pairs by the ranking, fit, normalize, reward.

Nothing here knows a trainer. Stable-Baselines3 drives the loop through ``heron/sb3/``; any other
training loop calls :meth:`HeronLoop.observe`, :meth:`HeronLoop.refit` and :meth:`HeronLoop.reward`
itself. One refit, top to bottom::

    pool (recent steps) -> units (transition | segment | episode) -> per-unit factor aggregates
      -> pairs of units -> teacher labels (decision tree, or weighted sum) -> teacher noise
      -> Bradley-Terry fit -> normalization refreshed on the newest rows -> rewards
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from heron.config import ComparisonConfig, RewardModelConfig, RunConfig, to_hierarchy, validate_section
from heron.errors import ConfigError
from heron.features import Encoding
from heron.hierarchy import Factor, Hierarchy, finite_std
from heron.preferences import (
    ExperiencePool,
    HierarchyTeacher,
    Teacher,
    WeightedSumTeacher,
    aggregate,
    flip,
    sample_pairs,
    sample_step_pairs,
)
from heron.resources import ADAM, FLOAT, check_memory, mlp_parameters
from heron.reward_model import BradleyTerryTrainer, RewardModel, TrainerConfig, Units, masked_scores

LEARNED_METHODS = ("heron", "flat-preference")
DEFAULT_POOL_STEPS = 10_000  # comparison.pool_steps: 0
NORMALIZATION_ROWS = 16_384  # pool rows the learned reward's shift and scale are computed from


def as_hierarchy(ranking: Hierarchy | Sequence[Factor | str | Mapping[str, Any]]) -> Hierarchy:
    """A :class:`Hierarchy` from a hierarchy, or a list of factors, names or factor mappings."""
    if isinstance(ranking, Hierarchy):
        return ranking
    if isinstance(ranking, str | bytes) or not isinstance(ranking, Sequence):
        raise ConfigError(f"hierarchy: expected a list of factors, got {type(ranking).__name__}")
    factors: list[Factor | str] = []
    for i, f in enumerate(ranking):
        if isinstance(f, Mapping):
            unknown = sorted(set(map(str, f)) - {"name", "direction", "margin", "margin_mode"})
            if unknown or "name" not in f:
                problem = f"unknown key {unknown[0]!r}" if unknown else "no name"
                raise ConfigError(f"hierarchy.{i}: {problem} (a factor has name, direction, margin and margin_mode)")
            factors.append(Factor(**f))
        elif isinstance(f, Factor | str):
            factors.append(f)
        else:
            raise ConfigError(f"hierarchy.{i}: expected a Factor, a name or a mapping, got {type(f).__name__}")
    return Hierarchy(factors)


def signed_weights(hierarchy: Hierarchy, weights: Mapping[str, float] | None) -> np.ndarray:
    """Weight per factor in the hierarchy's order (default 1), negative for a ``min`` factor."""
    return np.array([f.sign * (weights or {}).get(f.name, 1.0) for f in hierarchy.factors], dtype=np.float32)


class HeronLoop:
    """Learns a reward from a ranking of factors, for any training loop.

    Feed it experience with :meth:`observe`; call :meth:`refit` when :attr:`refit_due` (or whenever
    you like); score behaviour with :meth:`reward`. Arrays are time-major: a leading time axis, then
    an env axis when ``n_envs > 1``. ``factors`` is an array whose last axis follows the hierarchy's
    order, or a dict name -> array.

    :param hierarchy: the ranking, most important first (a :class:`Hierarchy` or a list of factors).
    :param observation_space: the Gymnasium space of an observation: Box, Discrete, MultiDiscrete,
        MultiBinary, or a Dict or Tuple of them (see :mod:`heron.features`); with images, the
        reward model reads ``factors`` (and may read actions) and the pool stores no frame.
    :param action_space: the Gymnasium space of an action (the same kinds).
    :param method: ``heron`` (the ranking's decision tree labels pairs) or ``flat-preference``
        (the weighted sum of the factors labels them).
    :param weights: ``{factor: weight}`` for ``flat-preference`` (default 1; a ``min`` factor counts negatively).
    :param seed: seeds pair sampling, teacher noise, the reward model's initialization and its minibatch order.
    :param n_envs: parallel environments whose steps arrive together.
    :param reward_model: the YAML ``reward_model`` section (a dict or :class:`heron.config.RewardModelConfig`).
    :param comparison: the YAML ``comparison`` section (a dict or :class:`heron.config.ComparisonConfig`);
        ``pool_steps: 0`` keeps 10,000 steps, ``update_every: 0`` makes a refit due after any new step.
    """

    def __init__(
        self,
        hierarchy: Hierarchy | Sequence[Factor | str | Mapping[str, Any]],
        observation_space: Any,
        action_space: Any,
        *,
        method: str = "heron",
        weights: Mapping[str, float] | None = None,
        seed: int = 0,
        n_envs: int = 1,
        reward_model: RewardModelConfig | Mapping[str, Any] | None = None,
        comparison: ComparisonConfig | Mapping[str, Any] | None = None,
    ) -> None:
        if method not in LEARNED_METHODS:
            raise ConfigError(f"method: the loop learns a reward with {' or '.join(LEARNED_METHODS)}, got {method!r}")
        if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
            raise ConfigError(f"n_envs: must be an int >= 1, got {n_envs!r}")
        self.hierarchy = as_hierarchy(hierarchy)
        self.method = method
        self.n_envs = n_envs
        self.model_config = validate_section(RewardModelConfig, reward_model, "reward_model")
        self.comparison = validate_section(ComparisonConfig, comparison, "comparison")
        if self.comparison.pair_within == "step" and n_envs < 2:
            raise ConfigError("comparison.pair_within: step compares envs of one vector step and needs n_envs >= 2")
        for name in weights or {}:
            if name not in self.hierarchy.names:
                raise ConfigError(
                    f"weights: factor {name!r} is not in the hierarchy ({', '.join(self.hierarchy.names)})"
                )
        self.teacher: Teacher = (
            HierarchyTeacher(self.hierarchy)
            if method == "heron"
            else WeightedSumTeacher(signed_weights(self.hierarchy, weights))
        )
        rm = self.model_config
        self.encoding = Encoding.from_spaces(observation_space, action_space, self.hierarchy.names, rm.inputs)
        check_memory(loop_memory(rm, self.comparison, self.encoding, n_envs))
        with torch.random.fork_rng():  # a seeded initialization that leaves the caller's torch RNG alone
            torch.manual_seed(seed)
            self.reward_model = RewardModel(
                self.encoding.dim, rm.hidden, rm.ensemble, rm.normalize, rm.offset, rm.scale, self.encoding
            )
        self.trainer = BradleyTerryTrainer(
            self.reward_model, TrainerConfig(rm.lr, rm.weight_decay, rm.epochs, rm.batch_size), seed=seed
        )
        self.pool = ExperiencePool(self.comparison.pool_steps or DEFAULT_POOL_STEPS, n_envs, self.encoding.stored)
        self.update_every = self.comparison.update_every or 1
        self.rng = np.random.default_rng(seed)
        self.steps = 0
        self.nonfinite_steps = 0
        self.last_refit: int | None = None
        self.diagnostics: dict[str, float] = {}

    # -- experience ---------------------------------------------------------------------------------
    def observe(self, *, obs: Any, action: Any, factors: Any, dones: Any, next_obs: Any = None) -> None:
        """Append consecutive steps to the pool.

        :param obs: observations before each step, shape (T, [n_envs,] *obs_shape); for a Dict
            space a dict of such arrays (a Tuple space: a tuple).
        :param action: the actions the env was given, shape (T, [n_envs,] *action_shape).
        :param factors: the factors each step reported, (T, [n_envs,] K) or ``{name: (T, [n_envs])}``.
        :param dones: whether each step ended its episode, (T, [n_envs]).
        :param next_obs: observations after each step (the terminal one where an episode ended);
            needed only when the reward model reads ``next_obs``.
        """
        dones = np.asarray(dones, dtype=bool)
        steps = dones.size // self.n_envs
        if dones.size != steps * self.n_envs or (self.n_envs > 1 and dones.shape[-1:] != (self.n_envs,)):
            raise ConfigError(f"dones: expected shape (T, {self.n_envs}), got {dones.shape}")
        given = {"obs": obs, "action": action, "next_obs": next_obs, "factors": factors}
        encoded, lead = self.encoding.encode(given, list(self.pool.fields))
        if int(np.prod(lead)) != dones.size:
            raise ConfigError(f"observe: inputs hold {int(np.prod(lead))} steps, dones {dones.size}")
        self.pool.extend(dones.reshape(steps, self.n_envs), **encoded)
        self.steps += steps * self.n_envs
        self.nonfinite_steps += int((~np.isfinite(encoded["factors"]).all(axis=1)).sum())

    @property
    def refit_due(self) -> bool:
        """Whether the schedule asks for a refit now: past ``warmup_steps``, and ``update_every``
        env steps observed since the last refit."""
        if self.steps < self.comparison.warmup_steps or self.pool.count == 0:
            return False
        return self.last_refit is None or self.steps - self.last_refit >= self.update_every

    # -- learning -----------------------------------------------------------------------------------
    def refit(self) -> dict[str, float]:
        """Label pairs of units from the pool, fit the reward model on them, refresh its normalization.

        :returns: the diagnostics (empty when the pool holds fewer than two units): ``rm_accuracy``
            (pair accuracy on the new pairs, before the fit), ``rm_loss``, ``pairs_labeled``,
            ``unlabeled`` (share of pairs no level decided), ``nonfinite`` (pairs left unlabeled by a
            non-finite factor), ``nonfinite_steps`` (steps observed so far with a factor that is not
            finite in float32: kept out of every label, reward-model input and statistic), and
            ``decided/<factor>`` (share decided at each level; ``heron`` only).
        """
        comparison = self.comparison
        index = self.pool.units(comparison.unit, comparison.segment_length)
        if len(index) < 2:
            return {}
        z = aggregate(self.pool.flat("factors").astype(np.float64), index, comparison.aggregate)
        if comparison.pair_within == "step":  # transition units are ordered step-major
            pairs = sample_step_pairs(len(index) // self.n_envs, self.n_envs, comparison.pairs, self.rng)
        else:
            pairs = sample_pairs(
                len(index), comparison.pairs, self.rng, comparison.units_per_batch, self.model_config.batch_size
            )
        if not len(pairs):
            return {}
        result = self.teacher.label(z[pairs[:, 0]], z[pairs[:, 1]], finite_std(z))
        labels = flip(result.labels, comparison.teacher_noise, self.rng)
        flat_rows, finite = self.encoding.rows({k: self.pool.flat(k) for k in self.encoding.inputs})
        rows = torch.from_numpy(flat_rows)
        stats = self.trainer.fit(
            Units(rows, torch.from_numpy(index)), torch.from_numpy(pairs), torch.from_numpy(labels.astype(np.int64))
        )
        if stats.pairs:
            # Keep the scale of the previous fit when nothing was learned (every pair tied). The
            # statistics come from the newest NORMALIZATION_ROWS rows of the pool: plenty for a
            # mean and a 1% quantile, and a bounded cost when many envs fill the pool fast.
            steps = min(self.pool.size, max(NORMALIZATION_ROWS // self.n_envs, 1))
            recent = self.pool.recent_rows(steps)
            self.reward_model.refresh_normalization(rows[torch.from_numpy(recent[finite[recent]])])
        shares = result.level_shares(len(self.hierarchy))
        self.diagnostics = {
            "rm_accuracy": stats.accuracy_before,
            "rm_loss": stats.loss,
            "pairs_labeled": stats.pairs,
            "unlabeled": float(shares[-1]),
            "nonfinite": int(result.nonfinite.sum()),
            "nonfinite_steps": self.nonfinite_steps,
        }
        if isinstance(self.teacher, HierarchyTeacher):  # a weighted-sum teacher has no levels
            self.diagnostics.update(
                {f"decided/{n}": float(s) for n, s in zip(self.hierarchy.names, shares[:-1], strict=True)}
            )
        self.last_refit = self.steps
        return dict(self.diagnostics)

    def reward(self, *, obs: Any = None, action: Any = None, next_obs: Any = None, factors: Any = None) -> np.ndarray:
        """The learned reward of raw steps, shaped like their leading axes (give the fields the model reads)."""
        return self.reward_model.reward(obs=obs, action=action, next_obs=next_obs, factors=factors)

    def recent_rewards(self, steps: int) -> np.ndarray:
        """The learned reward of the last ``steps`` observed vector steps, shape (steps, n_envs)."""
        index = self.pool.recent_rows(steps)
        rows, finite = self.encoding.rows({k: self.pool.flat(k)[index] for k in self.encoding.inputs})
        return masked_scores(self.reward_model, rows, finite).reshape(-1, self.n_envs)

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: model, optimizer, pool, RNG, schedule. Tensors and plain data only."""
        return {
            "reward_model": self.reward_model.state_dict(),
            "trainer": self.trainer.state_dict(),
            "pool": self.pool.state_dict(),
            "rng": self.rng.bit_generator.state,
            "steps": self.steps,
            "nonfinite_steps": self.nonfinite_steps,
            "last_refit": self.last_refit,
            "diagnostics": dict(self.diagnostics),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`; a :class:`ConfigError` when it does not fit this loop."""
        try:
            self.reward_model.load_state_dict(state["reward_model"])
            self.trainer.load_state_dict(state["trainer"])
            self.pool.load_state_dict(state["pool"])
            self.rng.bit_generator.state = dict(state["rng"])
            self.steps = int(state["steps"])
            self.nonfinite_steps = int(state["nonfinite_steps"])
            self.last_refit = None if state["last_refit"] is None else int(state["last_refit"])
            self.diagnostics = {str(k): float(v) for k, v in dict(state["diagnostics"]).items()}
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise ConfigError(f"loop state: does not fit this loop ({type(err).__name__})") from None


def loop_memory(
    model: RewardModelConfig, comparison: ComparisonConfig, encoding: Encoding, n_envs: int
) -> dict[str, tuple[int, str]]:
    """The loop's large arrays in bytes, by the setting that sizes them (see :func:`heron.resources.check_memory`)."""
    hidden = list(model.hidden)
    parameters = model.ensemble * mlp_parameters([encoding.dim, *hidden, 1])
    # Activations: a minibatch of pairs (both sides, forward and backward), and the rows scored at once.
    activations = model.ensemble * sum(hidden) * FLOAT * (4 * model.batch_size + NORMALIZATION_ROWS)
    rows = (comparison.pool_steps or DEFAULT_POOL_STEPS) * n_envs
    stored = sum(encoding.stored.values())
    n_factors = len(encoding.factors)
    group = min(comparison.units_per_batch, rows) if comparison.units_per_batch > 1 else 0
    pair_bytes = comparison.pairs * (8 * 2 + 2 * 8 * n_factors + 16)
    pair_bytes += -(-comparison.pairs // model.batch_size) * group * 8  # units drawn per minibatch block
    return {
        "reward_model": (
            parameters * FLOAT * ADAM + activations,
            f"hidden {hidden} x ensemble {model.ensemble}: {parameters:,} parameters with Adam's state",
        ),
        "comparison.pool_steps": (
            rows * (stored + encoding.dim) * FLOAT,
            f"{rows:,} steps of {stored} stored and {encoding.dim} encoded floats",
        ),
        "comparison.pairs": (pair_bytes, f"{comparison.pairs:,} pairs of {n_factors} factors"),
    }


def loop_from_config(config: RunConfig, observation_space: Any, action_space: Any, n_envs: int) -> HeronLoop:
    """The loop of a resolved :class:`heron.config.RunConfig` (its hierarchy is set)."""
    if config.hierarchy is None:
        raise ConfigError("hierarchy: required to learn a reward (resolve the config first)")
    return HeronLoop(
        to_hierarchy(config.hierarchy),
        observation_space,
        action_space,
        method=config.method,
        weights=config.weights,
        seed=config.seed,
        n_envs=n_envs,
        reward_model=config.reward_model,
        comparison=config.comparison,
    )
