"""heron-rl: train Stable-Baselines3 agents from a ranking of reward factors (HERON).

Rank the factors your environment reports, most important first; heron-rl compares behaviours
level by level, learns a Bradley-Terry reward model from those comparisons, and trains the agent
on the learned reward, online.
"""

from heron import envs as _envs  # registers the factorized environments with Gymnasium
from heron.errors import ConfigError, FactorError
from heron.factors import FactorWrapper, factorize
from heron.hierarchy import Factor, Hierarchy
from heron.reward_model import RewardModel
from heron.training import TrainResult, resume, train

__all__ = [
    "ConfigError",
    "Factor",
    "FactorError",
    "FactorWrapper",
    "Hierarchy",
    "RewardModel",
    "TrainResult",
    "factorize",
    "resume",
    "train",
]
__version__ = "0.1.0"
del _envs
