"""Factorized environments, registered with Gymnasium under the ``heron/`` namespace.

Environments only produce factors; they never import training code.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from heron.errors import ConfigError
from heron.hierarchy import Factor, Hierarchy


@dataclass(frozen=True)
class EnvInfo:
    """What heron-rl knows about a registered factorized environment.

    :param id: the Gymnasium id, ``heron/...``.
    :param factors: names of the factors the env reports each step.
    :param hierarchy: the default ranking, most important first.
    :param entry_point: ``module:function`` that builds the env.
    :param description: one line for ``heron envs``.
    :param algorithm_defaults: tuned SB3 hyperparameters per algorithm name, used when the config
        gives none.
    :param extra: the ``heron-rl[...]`` extra the env needs, if any.
    """

    id: str
    factors: tuple[str, ...]
    hierarchy: Hierarchy
    entry_point: str
    description: str
    algorithm_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: str | None = None

    @property
    def installed(self) -> bool:
        """Whether the packages of the env's extra can be imported (found, not imported: no MuJoCo or SUMO loads)."""
        return self.extra is None or extra_installed(self.extra)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "factors": list(self.factors),
            "hierarchy": [
                {"name": f.name, "direction": f.direction, "margin": f.margin, "margin_mode": f.margin_mode}
                for f in self.hierarchy.factors
            ],
        }


REGISTRY: dict[str, EnvInfo] = {}

EXTRA_MODULES: dict[str, tuple[tuple[str, ...], ...]] = {
    "mujoco": (("mujoco",),),
    # heron/envs/traffic.py: a SUMO client (libsumo, else TraCI), sumo-rl's networks, and SUMO
    # itself (eclipse-sumo's `sumo` package, unless SUMO_HOME points at an installed SUMO).
    "traffic": (("libsumo", "traci"), ("sumo_rl",), ("sumo",)),
}
"""``{extra: groups}``: the extra is installed when one module of every group can be found."""


def _importable(module: str) -> bool:
    if module == "sumo" and os.environ.get("SUMO_HOME"):
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def extra_installed(extra: str) -> bool:
    """Whether the ``heron-rl[extra]`` packages can be imported, without importing them."""
    return all(any(_importable(m) for m in group) for group in EXTRA_MODULES.get(extra, ()))


MO_PREFIX = "mo-gymnasium:"
"""An env id with this prefix is made with ``mo_gymnasium.make`` (``pip install 'heron-rl[mo]'``)."""


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` with one-line :class:`heron.ConfigError` messages for an unknown id or an
    env whose optional dependency is not installed (naming the heron-rl extra when it has one).

    ``mo-gymnasium:<id>`` makes MO-Gymnasium's env ``<id>`` with ``mo_gymnasium.make`` and factorizes
    it (:class:`heron.factors.ObjectiveFactors`): the kwargs ``objectives`` and ``utility`` go to the
    wrapper, the others to the env."""
    if env_id.startswith(MO_PREFIX):
        return _make_mo(env_id, **kwargs)
    if env_id not in gym.registry:
        raise ConfigError(f"env: unknown environment {env_id!r} (see `heron envs`)")
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.DependencyNotInstalled as err:
        extra = REGISTRY[env_id].extra if env_id in REGISTRY else None
        if extra:
            raise ConfigError(f"env {env_id} needs `pip install heron-rl[{extra}]`") from None
        raise _missing_dependency(env_id, err) from None


def _make_mo(env_id: str, objectives: Any = None, utility: Any = None, **kwargs: Any) -> gym.Env:
    if not _importable("mo_gymnasium"):
        raise ConfigError(f"env {env_id} needs `pip install 'heron-rl[mo]'`")
    import mo_gymnasium

    from heron.factors import ObjectiveFactors  # factors imports this module: import it here

    name = env_id.removeprefix(MO_PREFIX)
    if name not in gym.registry:
        raise ConfigError(
            f"env: unknown MO-Gymnasium environment {name!r} (an id of `mo_gymnasium.make`, e.g."
            " deep-sea-treasure-v0, from `pip install 'heron-rl[mo]'`)"
        )
    try:
        env = mo_gymnasium.make(name, **kwargs)
    except gym.error.DependencyNotInstalled as err:
        raise _missing_dependency(env_id, err) from None
    return ObjectiveFactors(env, objectives, utility, env_id)


def _missing_dependency(env_id: str, err: Exception) -> ConfigError:
    """One line naming what ``gym.error.DependencyNotInstalled`` says is missing."""
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ConfigError(f"env {env_id} needs a dependency that is not installed: {detail}")


def register(info: EnvInfo) -> None:
    """Add a factorized env to heron's registry and to Gymnasium's."""
    REGISTRY[info.id] = info
    if info.id not in gym.registry:
        gym.register(id=info.id, entry_point=info.entry_point)


_PPO_CLASSIC = {
    "n_steps": 2048,
    "batch_size": 64,
    "learning_rate": 2e-3,
    "gamma": 0.97,
    "gae_lambda": 0.95,
    "clip_range": 0.1,
    "ent_coef": 0.01,
    "policy_kwargs": {"net_arch": [32, 32]},
}

register(
    EnvInfo(
        id="heron/Pendulum-v1",
        factors=("angle", "angular_velocity", "torque"),
        hierarchy=Hierarchy(  # margins from `heron inspect`: at zero margins angle decides every pair
            [Factor("angle", "min", 0.1, "std"), Factor("angular_velocity", "min", 0.1, "std"), Factor("torque", "min")]
        ),
        entry_point="heron.envs.classic:make_pendulum",
        description="Pendulum swing-up; env reward -(angle + 0.1 angular_velocity + 0.001 torque)",
        algorithm_defaults={
            "ppo": _PPO_CLASSIC,
            "sac": {"learning_rate": 1e-3, "learning_starts": 1000},
            "td3": {"learning_rate": 1e-3, "learning_starts": 1000},
            "ddpg": {"learning_rate": 1e-3, "learning_starts": 1000},
        },
    )
)
register(
    EnvInfo(
        id="heron/MountainCarContinuous-v0",
        factors=("goal", "energy"),
        hierarchy=Hierarchy([Factor("goal", "max"), Factor("energy", "min", 1.0, "std")]),
        entry_point="heron.envs.classic:make_mountain_car",
        description="Mountain car, sparse goal; env reward 100 goal - 0.1 energy",
        algorithm_defaults={
            "ppo": {
                "n_steps": 8,
                "batch_size": 256,
                "gamma": 0.9999,
                "learning_rate": 7.77e-05,
                "ent_coef": 0.00429,
                "clip_range": 0.1,
                "n_epochs": 10,
                "gae_lambda": 0.9,
                "max_grad_norm": 5,
                "vf_coef": 0.19,
                "use_sde": True,
                "policy_kwargs": {"log_std_init": -3.29, "ortho_init": False},
            },
            "sac": {
                "learning_rate": 3e-4,
                "buffer_size": 50000,
                "batch_size": 512,
                "ent_coef": 0.1,
                "train_freq": 32,
                "gradient_steps": 32,
                "gamma": 0.9999,
                "tau": 0.01,
                "learning_starts": 0,
                "use_sde": True,
                "policy_kwargs": {"log_std_init": -3.67, "net_arch": [64, 64]},
            },
        },
    )
)

# Gymnasium v5 MuJoCo robots (``pip install heron-rl[mujoco]``). Factors are the env's own reward
# components (see heron/envs/mujoco.py); rankings and margins follow the HERON paper's code.
_PPO_MUJOCO = {
    "n_steps": 2048,
    "batch_size": 64,
    "learning_rate": 3e-4,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "n_epochs": 10,
    "clip_range": 0.2,
}
_MUJOCO_DEFAULTS: dict[str, dict[str, Any]] = {"ppo": _PPO_MUJOCO, "sac": {"learning_starts": 10_000}}

register(
    EnvInfo(
        id="heron/HalfCheetah-v5",
        factors=("progress", "control_cost"),
        hierarchy=Hierarchy([Factor("progress", "max", 0.5, "std"), Factor("control_cost", "min", 0.1, "std")]),
        entry_point="heron.envs.mujoco:make_half_cheetah",
        description="MuJoCo HalfCheetah run forward; env reward progress - control_cost",
        algorithm_defaults=_MUJOCO_DEFAULTS,
        extra="mujoco",
    )
)
register(
    EnvInfo(
        id="heron/Hopper-v5",
        factors=("progress", "alive", "control_cost"),
        hierarchy=Hierarchy(
            [
                Factor("progress", "max", 0.1, "std"),
                Factor("alive", "max", 0.2, "std"),
                Factor("control_cost", "min", 0.5, "std"),
            ]
        ),
        entry_point="heron.envs.mujoco:make_hopper",
        description="MuJoCo Hopper hop forward; env reward progress + alive - control_cost",
        algorithm_defaults=_MUJOCO_DEFAULTS,
        extra="mujoco",
    )
)
register(
    EnvInfo(
        id="heron/Ant-v5",
        factors=("progress", "alive", "control_cost", "contact_cost"),
        hierarchy=Hierarchy(
            [
                Factor("alive", "max", 1.0, "std"),
                Factor("progress", "max", 0.5, "std"),
                Factor("control_cost", "min", 0.5, "std"),
                Factor("contact_cost", "min", 0.5, "std"),
            ]
        ),
        entry_point="heron.envs.mujoco:make_ant",
        description="MuJoCo Ant walk forward; env reward progress + alive - control_cost - contact_cost",
        algorithm_defaults=_MUJOCO_DEFAULTS,
        extra="mujoco",
    )
)

# SUMO traffic signal control (``pip install heron-rl[traffic]``), every light of a network, one
# slot per intersection (see heron/envs/traffic.py). Ranking after the HERON paper: queue length >
# waiting time > the other signals. Agent defaults: a PPO rollout of 720 steps per intersection
# is one default episode (3600 s at 5 s per step); DQN follows sumo-rl's examples.
_TRAFFIC_FACTORS = ("queue", "waiting_time", "delay", "throughput", "switches", "safety")
_TRAFFIC_HIERARCHY = Hierarchy(
    [
        Factor("queue", "min"),
        Factor("waiting_time", "min"),
        Factor("delay", "min"),
        Factor("throughput", "max"),
        Factor("switches", "min"),
        Factor("safety", "min"),
    ]
)
_TRAFFIC_DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": {
        "n_steps": 720,
        "batch_size": 240,
        "learning_rate": 3e-4,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "n_epochs": 10,
        "clip_range": 0.2,
        "ent_coef": 0.01,
    },
    "dqn": {
        "learning_rate": 1e-3,
        "buffer_size": 50_000,
        "learning_starts": 0,
        "train_freq": 1,
        "target_update_interval": 500,
        "exploration_fraction": 0.05,
        "exploration_final_eps": 0.01,
    },
}
for _id, _entry, _description in [
    ("heron/TrafficSingle-v0", "make_single", "SUMO single intersection (sumo-rl), 1 light"),
    ("heron/TrafficGrid2x2-v0", "make_grid2x2", "SUMO 2x2 grid (sumo-rl), 4 lights"),
    ("heron/TrafficCologne8-v0", "make_cologne8", "SUMO Cologne, real demand 7-8 am (RESCO), 8 lights"),
    ("heron/Traffic-v0", "make_network", "your SUMO network: env_kwargs net_file, route_file, num_seconds"),
]:
    register(
        EnvInfo(
            id=_id,
            factors=_TRAFFIC_FACTORS,
            hierarchy=_TRAFFIC_HIERARCHY,
            entry_point=f"heron.envs.traffic:{_entry}",
            description=f"{_description}; env reward: drop in vehicle waiting time (sumo-rl)",
            algorithm_defaults=_TRAFFIC_DEFAULTS,
            extra="traffic",
        )
    )
del _id, _entry, _description
