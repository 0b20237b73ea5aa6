"""Run generated programs against tests in a sandbox, and the offline code tasks to train on.

``execute`` / ``execute_many`` run untrusted Python in warm sandboxed workers (bubblewrap or
``unshare``; see ``docs/sandbox.md``) and return an :class:`Outcome` whose ``factors``
(``compiles``, ``runs``, ``pass_rate``, ``passed``) a :class:`heron.Hierarchy` can rank.
``heron.code.tasks`` loads HumanEval and generates MBPP-like problems. :func:`train_code` trains a
policy with trl (GRPO or RLOO) on a ranking of those factors (``heron code train``), and
:func:`evaluate` / :func:`pass_at_k` measure Pass@k (``heron code eval``). Importing this package
starts nothing; the default worker pool starts on the first call, transformers and trl load when a
model does.
"""

from __future__ import annotations

from heron.code.evaluate import evaluate, pass_at_k
from heron.code.sandbox import Outcome, Sandbox, SandboxUnavailable, execute, execute_many
from heron.code.train import CodeTrainConfig, CodeTrainResult, run_code, similarity, train_code
from heron.models import load_causal_lm, save_causal_lm

__all__ = [
    "CodeTrainConfig",
    "CodeTrainResult",
    "Outcome",
    "Sandbox",
    "SandboxUnavailable",
    "evaluate",
    "execute",
    "execute_many",
    "load_causal_lm",
    "pass_at_k",
    "run_code",
    "save_causal_lm",
    "similarity",
    "train_code",
]
