"""heron-rl: train agents from a ranking of reward factors (HERON).

Rank the factors your environment reports, most important first; heron-rl compares behaviours
level by level, learns a Bradley-Terry reward model from those comparisons, and trains the agent
on the learned reward, online: with Stable-Baselines3 (:func:`train`) or with any training loop
of your own (:class:`HeronLoop`).

Importing ``heron`` registers the factorized environments with Gymnasium; torch and SB3 load only
when a name that needs them is first used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from heron import envs as _envs  # registers the factorized environments with Gymnasium
from heron.errors import ConfigError, FactorError
from heron.hierarchy import Factor, Hierarchy

if TYPE_CHECKING:
    from heron.factors import FactorWrapper, factorize
    from heron.loop import HeronLoop
    from heron.reward_model import RewardModel
    from heron.sb3.run import TrainResult, resume, train
    from heron.trl_reward import GroupReward

_LAZY = {
    "FactorWrapper": "heron.factors",
    "GroupReward": "heron.trl_reward",
    "factorize": "heron.factors",
    "HeronLoop": "heron.loop",
    "RewardModel": "heron.reward_model",
    "TrainResult": "heron.sb3.run",
    "resume": "heron.sb3.run",
    "train": "heron.sb3.run",
}

__all__ = [
    "ConfigError",
    "Factor",
    "FactorError",
    "FactorWrapper",
    "GroupReward",
    "HeronLoop",
    "Hierarchy",
    "RewardModel",
    "TrainResult",
    "factorize",
    "resume",
    "train",
]
__version__ = "0.1.0"
del _envs


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'heron' has no attribute {name!r}")
