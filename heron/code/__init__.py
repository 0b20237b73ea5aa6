"""Run generated programs against tests in a sandbox, and the offline code tasks to train on.

``execute`` / ``execute_many`` run untrusted Python in warm sandboxed workers (bubblewrap or
``unshare``; see ``docs/sandbox.md``) and return an :class:`Outcome` whose ``factors``
(``compiles``, ``runs``, ``pass_rate``, ``passed``) a :class:`heron.Hierarchy` can rank.
``heron.code.tasks`` loads HumanEval and generates MBPP-like problems. Importing this package
starts nothing; the default worker pool starts on the first call.
"""

from __future__ import annotations

from heron.code.sandbox import Outcome, Sandbox, SandboxUnavailable, execute, execute_many

__all__ = ["Outcome", "Sandbox", "SandboxUnavailable", "execute", "execute_many"]
