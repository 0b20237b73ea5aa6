"""Validated run settings: nothing runs before the whole config is valid."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from heron.envs import MO_PREFIX
from heron.errors import ConfigError
from heron.hierarchy import Factor, Hierarchy

FLOAT32_MAX = 3.4028234663852886e38  # weights are applied in float32
ALGORITHMS = ("ppo", "a2c", "sac", "td3", "ddpg", "dqn")
METHODS = ("heron", "ground-truth", "weighted-sum", "flat-preference")
MAX_ENVS = 4096  # environments stepped one after another in one process (SB3's DummyVecEnv)
Input = Literal["obs", "action", "next_obs", "factors"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FactorConfig(_Strict):
    """One ranked factor (see :class:`heron.Factor`)."""

    name: str
    direction: Literal["max", "min"] = "max"
    margin: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    margin_mode: Literal["absolute", "std"] = "absolute"


class RewardModelConfig(_Strict):
    """The learned reward.

    :param inputs: what a step's features are made of; the default (state, action) works when the
        best action depends on the state.
    :param hidden: hidden layer widths of the MLP.
    :param ensemble: members trained together (one batched network).
    :param normalize: standardize the learned reward after each refit (strongly recommended).
    :param offset: what a standardized reward of 0 means. A Bradley-Terry reward is only defined up
        to a constant, and in envs whose episodes can end early that constant decides whether
        living longer pays. ``mean``: the mean of the latest data (the default; right when every
        episode runs its full length). ``low``: its 1st percentile, so almost every step earns a
        positive reward and staying alive pays (envs that end on failure, e.g. Hopper, Ant).
        ``high``: its 99th percentile, so steps cost and ending sooner pays (envs that end on
        success, e.g. MountainCar).
    :param scale: the std of the normalized reward. 1 suits most tuned settings; lower it when the
        agent's settings expect small rewards (SAC with a fixed entropy coefficient).
    :param lr: Adam learning rate.
    :param weight_decay: L2 penalty.
    :param epochs: passes over each refit's pairs.
    :param batch_size: pairs per minibatch.
    """

    inputs: tuple[Input, ...] = ("obs", "action")
    hidden: tuple[Annotated[int, Field(strict=True)], ...] = (256, 256)
    ensemble: int = Field(1, ge=1, strict=True)
    normalize: bool = True
    offset: Literal["mean", "low", "high"] = "mean"
    scale: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False)
    lr: float = Field(1e-3, gt=0, le=1.0, allow_inf_nan=False)
    weight_decay: float = Field(1e-4, ge=0, le=1.0, allow_inf_nan=False)
    epochs: int = Field(2, ge=1, strict=True)
    batch_size: int = Field(256, ge=1, strict=True)

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("choose at least one of obs, action, next_obs, factors")
        if len(set(v)) != len(v):
            raise ValueError("an input is listed twice")
        return v

    @field_validator("hidden")
    @classmethod
    def _hidden(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(h < 1 for h in v):
            raise ValueError("hidden widths must be >= 1")
        return v


class ComparisonConfig(_Strict):
    """What gets compared, how often, and by how noisy a teacher.

    :param unit: transitions, fixed-length segments, or whole episodes.
    :param segment_length: steps per segment (``unit: segment``).
    :param aggregate: how a unit's per-step factors combine.
    :param pairs: pairs drawn per refit.
    :param units_per_batch: each minibatch's pairs are drawn among this many units, so each unit is
        scored once for several comparisons (0: independent pairs).
    :param pool_steps: recent vector steps kept for drawing pairs and for the reward's
        normalization (0: 10,000; on-policy algorithms keep at least one rollout). A pool of
        several rollouts keeps the reward model from forgetting states the policy has left, and
        its scale from jumping when one rollout's states are all alike (on Pendulum one rollout
        let 1 of 5 seeds collapse late in training; 10,240 steps, none).
    :param update_every: env steps between refits (0: every rollout for on-policy, 1,000 for off-policy).
    :param warmup_steps: env steps before the first refit (off-policy: at least ``learning_starts``).
    :param teacher_noise: probability of flipping each label (robustness studies).
    :param pair_within: ``pool`` (any two units of the pool) or ``step`` (two transitions of the
        same vector step: with one env per completion of a prompt, the completions of one prompt
        are compared with each other only; needs ``unit: transition`` and two or more envs).
    """

    unit: Literal["transition", "segment", "episode"] = "transition"
    segment_length: int = Field(25, ge=1, strict=True)
    aggregate: Literal["sum", "mean", "min", "max", "last"] = "sum"
    pairs: int = Field(4096, ge=1, strict=True)
    units_per_batch: int = Field(64, ge=0, strict=True)
    pool_steps: int = Field(0, ge=0, strict=True)
    update_every: int = Field(0, ge=0, strict=True)
    warmup_steps: int = Field(0, ge=0, strict=True)
    teacher_noise: float = Field(0.0, ge=0.0, le=0.5, allow_inf_nan=False)
    pair_within: Literal["pool", "step"] = "pool"

    @model_validator(mode="after")
    def _step_pairs_are_transitions(self) -> ComparisonConfig:
        if self.pair_within == "step" and self.unit != "transition":
            raise ValueError(f"pair_within: step compares transitions of one vector step (unit is {self.unit})")
        return self


class EvalConfig(_Strict):
    """Evaluation on the env's own reward.

    :param every: env steps between evaluations (0: 10 per run).
    :param episodes: episodes per evaluation (deterministic policy).
    """

    every: int = Field(0, ge=0, strict=True)
    episodes: int = Field(5, ge=1, strict=True)


class RunConfig(_Strict):
    """Everything one training run needs (the YAML config of ``heron train``)."""

    env: str
    algorithm: str = "ppo"
    method: str = "heron"
    total_timesteps: int = Field(50_000, gt=0, strict=True)
    seed: int = Field(0, ge=0, lt=2**32, strict=True)
    n_envs: int = Field(1, ge=1, le=MAX_ENVS, strict=True)
    hierarchy: tuple[FactorConfig, ...] | None = None
    weights: dict[str, float] | None = None
    reward_model: RewardModelConfig = RewardModelConfig()
    comparison: ComparisonConfig = ComparisonConfig()
    eval: EvalConfig = EvalConfig()
    algorithm_kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint_every: int = Field(0, ge=0, strict=True)
    env_kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _objectives(cls, data: Any) -> Any:
        """``objectives`` and ``utility`` of a vector-reward env are its settings: they move into ``env_kwargs``
        (where the resolved config records them), and without a ``hierarchy`` the objectives, in the order
        given, become the ranking, each maximized (MO-Gymnasium's convention)."""
        if not isinstance(data, dict) or not {"objectives", "utility"} & data.keys():
            return data
        env, env_kwargs = data.get("env"), data.get("env_kwargs") or {}
        if not (isinstance(env, str) and env.startswith(MO_PREFIX)):
            raise ValueError(f"objectives, utility: only for a vector-reward env (env: {MO_PREFIX}<id>)")
        if not isinstance(env_kwargs, dict):
            return data  # env_kwargs' own error names it
        data = dict(data)
        moved = {k: data.pop(k) for k in ("objectives", "utility") if k in data}
        for key in moved:
            if key in env_kwargs:
                raise ValueError(f"{key}: given both at the top and in env_kwargs")
        objectives = moved.get("objectives")
        if not (objectives is None or (isinstance(objectives, list) and all(isinstance(o, str) for o in objectives))):
            raise ValueError(f"objectives: expected a list of names, got {objectives!r}")
        utility = moved.get("utility")
        if not (utility is None or (isinstance(utility, list) and all(_number(w) for w in utility))):
            raise ValueError(f"utility: expected a list of weights, one per objective, got {utility!r}")
        data["env_kwargs"] = {**env_kwargs, **moved}
        if data.get("hierarchy") is None and objectives:
            data["hierarchy"] = [{"name": o, "direction": "max"} for o in objectives]
        return data

    @field_validator("algorithm")
    @classmethod
    def _algorithm(cls, v: str) -> str:
        if v.lower() not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {v!r} (choose from {', '.join(ALGORITHMS)})")
        return v.lower()

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r} (choose from {', '.join(METHODS)})")
        return v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and not all(math.isfinite(w) and abs(w) <= FLOAT32_MAX for w in v.values()):
            raise ValueError(f"weights must be finite numbers of at most {FLOAT32_MAX:.3g} in size (float32)")
        return v

    @field_validator("env_kwargs", "algorithm_kwargs")
    @classmethod
    def _finite_kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = _nonfinite_path(v)
        if bad is not None:
            raise ValueError(f"{bad}: must be a finite number")
        return v

    @model_validator(mode="after")
    def _hierarchy_valid(self) -> RunConfig:
        if self.hierarchy is not None:
            to_hierarchy(self.hierarchy)
        return self


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _nonfinite_path(value: Any, where: str = "") -> str | None:
    """The dotted path of the first NaN or infinite float inside nested dicts and lists, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where.lstrip(".") or "value"
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list | tuple) else ()
    for key, inner in items:
        found = _nonfinite_path(inner, f"{where}.{key}")
        if found is not None:
            return found
    return None


def to_hierarchy(factors: tuple[FactorConfig, ...] | list[FactorConfig]) -> Hierarchy:
    """The :class:`Hierarchy` of validated factor settings."""
    return Hierarchy([Factor(f.name, f.direction, f.margin, f.margin_mode) for f in factors])


def from_hierarchy(hierarchy: Hierarchy) -> tuple[FactorConfig, ...]:
    """Factor settings of a :class:`Hierarchy`."""
    return tuple(
        FactorConfig(name=f.name, direction=f.direction, margin=f.margin, margin_mode=f.margin_mode)
        for f in hierarchy.factors
    )


def validate(data: Any, source: str = "config") -> RunConfig:
    """A :class:`RunConfig` from a mapping; a :class:`ConfigError` naming the first bad field."""
    return validate_model(RunConfig, data, source)


def validate_model(kind: type[S], data: Any, source: str = "config") -> S:
    """A whole config of any kind (run, code, LM) from an instance or a mapping; a one-line
    :class:`ConfigError` that starts with ``source`` and names the first bad field."""
    if isinstance(data, kind):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return kind.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(f"{source}: {_first_error(err)}") from None
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


S = TypeVar("S", bound=BaseModel)


def validate_section(kind: type[S], data: S | Mapping[str, Any] | None, source: str) -> S:
    """One validated config section from an instance, a mapping of its keys, or None (its defaults)."""
    if isinstance(data, kind):
        return data
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return kind.model_validate(dict(data or {}))
    except ValidationError as err:
        raise ConfigError(f"{source}.{_first_error(err)}") from None


MAX_CONFIG_BYTES = 1 << 20  # a config is settings, not data
MAX_YAML_VALUES = 100_000  # values a config may hold once its aliases are expanded


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only), refusing a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges; keys written beside it override the merged ones
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # an unhashable key: PyYAML's own error names it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found the key {key!r} twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, path: Path) -> int:
    """Values the document holds with every alias expanded; a recursive alias is an error."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in open_nodes:
            raise ConfigError(f"{path}: invalid YAML at line {n.start_mark.line + 1}: an alias refers to itself")
        open_nodes.add(id(n))
        children: list[yaml.Node] = []
        if isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        elif isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        total = 1 + sum(size(c) for c in children)
        open_nodes.discard(id(n))
        sizes[id(n)] = total
        return total

    return size(node)


def read_yaml(path: str | Path) -> Any:
    """The parsed contents of a YAML config file; a :class:`ConfigError` when it cannot be read or parsed.

    Plain data only (no Python tags); a key given twice in one mapping, aliases that refer to
    themselves or expand to more than 100,000 values, and files over 1 MiB are refused.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB (a config holds settings, not data)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte {raw[err.start]:#04x} at line {line})") from None
    try:
        loader = _ConfigLoader(text)  # its reader refuses characters YAML does not allow, at once
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            if _expanded_size(node, path) > MAX_YAML_VALUES:
                raise ConfigError(f"{path}: its aliases expand to more than {MAX_YAML_VALUES:,} values")
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as err:  # one line: where, what, and in what (PyYAML's problem and context)

        def at(mark: Any) -> str:
            return f" at line {mark.line + 1}" if mark is not None else ""

        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        context = " ".join(str(getattr(err, "context", None) or "").split())
        if context:
            problem += f" ({context}{at(getattr(err, 'context_mark', None))})"
        raise ConfigError(f"{path}: invalid YAML{at(getattr(err, 'problem_mark', None))}: {problem}") from None


def load_run(run_dir: str | Path, verb: str) -> tuple[Path, RunConfig]:
    """A run directory and its validated ``config.yaml``; errors start with ``verb`` (``resume``, ``inspect``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{verb}: {run_dir} does not exist or is not a directory")
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{verb}: {run_dir} holds no config.yaml (not a run directory)")
    return run_dir, validate(read_yaml(config_file), str(config_file))


def load(path: str | Path) -> RunConfig:
    """Read and validate a YAML config file."""
    return validate(read_yaml(path), str(path))


def config_kind(data: Mapping[str, Any]) -> str:
    """What a config trains: ``code`` (it names ``tasks``: ``heron code train``), ``lm`` (it names
    ``ratings``: ``heron lm train``) or ``control`` (an SB3 agent on an env: ``heron train``)."""
    if "tasks" in data:
        return "code"
    return "lm" if "ratings" in data else "control"


class Sweep(NamedTuple):
    """A compare config: the run config, its ``variants`` ({name: overrides}), the ``threshold`` of
    ``steps_to_threshold`` and the ``pareto`` settings of vector-reward envs (see
    :func:`heron.experiments.pareto.report_sweep`)."""

    base: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    threshold: float | None
    pareto: dict[str, Any] | None


def load_sweep(path: str | Path) -> Sweep:
    """A compare config: a run config plus optional ``variants``, ``threshold`` and ``pareto``."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    variants = data.pop("variants", None) or {}
    threshold = data.pop("threshold", None)
    pareto = data.pop("pareto", None)
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise ConfigError(f"{path}: variants must map names to setting overrides")
    if threshold is not None and not isinstance(threshold, int | float):
        raise ConfigError(f"{path}: threshold must be a number")
    if pareto is not None and not isinstance(pareto, dict):
        raise ConfigError(f"{path}: pareto must be a mapping (reference_point, front, weights)")
    if config_kind(data) == "control":  # code and language-model configs are checked by their own modules
        validate(data, str(path))
    return Sweep(data, variants, None if threshold is None else float(threshold), pareto)


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown setting"
    if first["type"] == "missing":
        message = "required setting is missing"
    field = ".".join(str(p) for p in first["loc"])
    return f"{field}: {message}" if field else message
