"""Language-model alignment from multi-attribute ratings: preference pairs labeled by a ranking.

``pairs_from_ratings`` turns a rating table (HelpSteer's columns, or any prompt / response / numeric
attributes) into trl preference pairs with the ranking's decision tree; ``generate_ratings`` writes
a HelpSteer-schema rating set whose answers ``score_response`` checks; ``train_online`` (``run_lm``)
trains a policy with GRPO or RLOO on a reward learned from the ranking.

Names load when first used, so that ``heron.cli`` can mount ``heron.lm.cli`` without loading them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from heron.lm.online import OnlineConfig, OnlineResult, run_lm, train_online
    from heron.lm.pairs import PairReport, Pairs, pairs_from_ratings, parse_hierarchy, read_ratings
    from heron.lm.ratings import ResponseScore, generate_ratings, parse_task, save_ratings, score_response
    from heron.lm.train import LMTrainConfig, LMTrainResult, train_lm

_LAZY = {
    "OnlineConfig": "heron.lm.online",
    "OnlineResult": "heron.lm.online",
    "run_lm": "heron.lm.online",
    "train_online": "heron.lm.online",
    "PairReport": "heron.lm.pairs",
    "Pairs": "heron.lm.pairs",
    "pairs_from_ratings": "heron.lm.pairs",
    "parse_hierarchy": "heron.lm.pairs",
    "read_ratings": "heron.lm.pairs",
    "ResponseScore": "heron.lm.ratings",
    "generate_ratings": "heron.lm.ratings",
    "parse_task": "heron.lm.ratings",
    "save_ratings": "heron.lm.ratings",
    "score_response": "heron.lm.ratings",
    "LMTrainConfig": "heron.lm.train",
    "LMTrainResult": "heron.lm.train",
    "train_lm": "heron.lm.train",
}

__all__ = [
    "LMTrainConfig",
    "LMTrainResult",
    "OnlineConfig",
    "OnlineResult",
    "PairReport",
    "Pairs",
    "ResponseScore",
    "generate_ratings",
    "pairs_from_ratings",
    "parse_hierarchy",
    "parse_task",
    "read_ratings",
    "run_lm",
    "save_ratings",
    "score_response",
    "train_lm",
    "train_online",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'heron.lm' has no attribute {name!r}")
