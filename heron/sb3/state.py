"""An SB3 algorithm's training state as tensors and arrays, never as pickles.

SB3's own ``save``/``load`` keep pickled attributes in ``policy.zip`` and pickle the replay
buffer: loading them can run code. Here the algorithm is always rebuilt from the validated config
and only its numbers are restored: module and optimizer state dicts and extra tensors
(``torch.load(weights_only=True)``), a few counters (JSON), and the replay buffer's arrays
(``.npz`` without pickles).
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from heron.checkpoints import load_arrays, load_tensors, save_arrays
from heron.errors import ConfigError

# Counters of BaseAlgorithm and its subclasses that training reads (schedules, target updates, logs).
COUNTERS = ("num_timesteps", "_episode_num", "_n_updates", "_n_calls", "exploration_rate")
REPLAY_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def algorithm_counters(model: BaseAlgorithm) -> dict[str, float]:
    """The counters training reads, as plain numbers (for JSON)."""
    return {name: getattr(model, name) for name in COUNTERS if hasattr(model, name)}


def save_algorithm(model: BaseAlgorithm, path: Path) -> None:
    """Write the module and optimizer state dicts and extra tensors."""
    # ``_get_torch_save_params`` is how SB3's own ``save`` learns what to keep: the state-dict
    # owners (policy, optimizers, SAC's entropy optimizer) and bare tensors (SAC's log_ent_coef).
    _, variables = model._get_torch_save_params()
    tensors = {name: operator.attrgetter(name)(model).detach().clone() for name in variables}
    torch.save({"params": model.get_parameters(), "tensors": tensors}, path)


def load_algorithm(model: BaseAlgorithm, path: Path, counters: dict[str, Any]) -> None:
    """Restore :func:`save_algorithm` into a model built from the same config."""
    saved = load_tensors(path)
    try:
        model.set_parameters(saved["params"], exact_match=True, device="cpu")
        _, variables = model._get_torch_save_params()
        for name in variables:
            operator.attrgetter(name)(model).data.copy_(saved["tensors"][name])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(
            f"{path}: does not fit the algorithm the config builds ({type(err).__name__}: {first})"[:300]
        ) from None
    for name, value in counters.items():
        if name not in COUNTERS or not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{path.parent}: counter {name!r} is not a known number")
        if name != "exploration_rate" and (value < 0 or value != int(value)):
            raise ConfigError(f"{path.parent}: counter {name} must be a whole number >= 0, got {value}")
        setattr(model, name, float(value) if name == "exploration_rate" else int(value))


def _arrays(buffer: ReplayBuffer, name: str) -> dict[str, np.ndarray]:
    """One of the buffer's arrays by name; a Dict observation's arrays (DictReplayBuffer) as ``name/key``."""
    value = getattr(buffer, name)
    return {f"{name}/{k}": v for k, v in value.items()} if isinstance(value, dict) else {name: value}


def save_replay(model: BaseAlgorithm, path: Path, extra: dict[str, np.ndarray] | None = None) -> None:
    """The replay buffer's filled rows (and any ``extra`` per-row arrays) as an ``.npz``."""
    buffer = _replay(model)
    upto = buffer.buffer_size if buffer.full else buffer.pos
    arrays = {name: a[:upto] for k in REPLAY_ARRAYS if hasattr(buffer, k) for name, a in _arrays(buffer, k).items()}
    arrays |= {f"extra/{k}": v[:upto] for k, v in (extra or {}).items()}
    arrays["position"] = np.array([buffer.pos, int(buffer.full)], dtype=np.int64)
    save_arrays(path, arrays)


def load_replay(model: BaseAlgorithm, path: Path, extra: dict[str, np.ndarray] | None = None) -> None:
    """Restore :func:`save_replay` into the model's (empty) replay buffer and the ``extra`` arrays."""
    buffer = _replay(model)
    arrays = load_arrays(path)
    if "position" not in arrays or arrays["position"].shape != (2,):
        raise ConfigError(f"{path}: holds no replay position")
    pos, full = (int(v) for v in arrays["position"])
    upto = buffer.buffer_size if full else pos
    if not 0 <= pos < buffer.buffer_size:
        raise ConfigError(f"{path}: replay position {pos} does not fit a buffer of {buffer.buffer_size}")
    targets = {name: a for k in REPLAY_ARRAYS if hasattr(buffer, k) for name, a in _arrays(buffer, k).items()}
    targets |= {f"extra/{k}": v for k, v in (extra or {}).items()}
    for name, target in targets.items():
        source = arrays.get(name)
        if source is None or source.shape != (upto, *target.shape[1:]):
            raise ConfigError(f"{path}: {name} is missing or has the wrong shape")
        target[:upto] = source
    buffer.pos, buffer.full = pos, bool(full)


def _replay(model: BaseAlgorithm) -> ReplayBuffer:
    if not isinstance(model, OffPolicyAlgorithm) or not isinstance(model.replay_buffer, ReplayBuffer):
        raise ConfigError("replay buffer: only off-policy algorithms with a plain ReplayBuffer keep one")
    return model.replay_buffer
