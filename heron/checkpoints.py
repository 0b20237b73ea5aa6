"""Checkpoints a run resumes from: a set of files that becomes visible all at once, checked on load.

``RUN_DIR/checkpoints/ckpt-NNNNNN/`` holds ``state.json`` (counters, settings and the SHA-256 of
every other file of the set) beside the data files; ``RUN_DIR/checkpoints/LATEST`` names the set to
resume from and holds the SHA-256 of its ``state.json``, so no byte of a set changes unnoticed.
A new set is written under a temporary name, renamed into place, and only then does
``LATEST`` switch to it (one rename), so a kill at any moment leaves the previous set or the new
one, never a mix. Loaders read JSON, safetensors, ``torch.load(weights_only=True)`` and ``.npz``
with ``allow_pickle=False`` only: nothing in a run directory is unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heron.errors import ConfigError

STATE = "state.json"
LATEST = "LATEST"
_NAME = re.compile(r"^ckpt-(\d{6,})$")


@dataclass(frozen=True)
class Checkpoint:
    """One verified checkpoint set: its folder and its ``state.json``."""

    path: Path
    state: dict[str, Any]

    def file(self, name: str) -> Path:
        """A data file of the set (listed in its checksums)."""
        if name not in self.state["files"]:
            raise ConfigError(f"checkpoint {self.path}: holds no {name}")
        return self.path / name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write(run_dir: Path, files: Mapping[str, Callable[[Path], None]], state: Mapping[str, Any]) -> Path:
    """Write a new checkpoint set and switch ``LATEST`` to it; older sets are then removed.

    :param files: ``{file name: writer}``, each writer writing its file at the path it is given.
    :param state: JSON-serializable counters and settings (``files`` is added: the checksums).
    """
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in root.iterdir() if (m := _NAME.match(p.name))]
    name = f"ckpt-{max(numbers, default=0) + 1:06d}"
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for file_name, writer in files.items():
        writer(tmp / file_name)
    checksums = {file_name: _sha256(tmp / file_name) for file_name in files}
    state_text = json.dumps({**state, "files": checksums}, allow_nan=False)
    (tmp / STATE).write_text(state_text)
    for file_name in [*files, STATE]:
        _sync(tmp / file_name)
    _sync(tmp)
    tmp.rename(root / name)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(json.dumps({"name": name, "state_sha256": hashlib.sha256(state_text.encode()).hexdigest()}))
    _sync(pointer)
    os.replace(pointer, root / LATEST)
    _sync(root)
    for old in root.iterdir():
        if old.name != name and (_NAME.match(old.name) or old.name.endswith(".tmp")):
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    return root / name


def _sync(path: Path) -> None:
    """Flush a file's bytes or a directory's entries to disk, where the platform allows it (so a
    power cut, not only a kill, leaves a complete set or none)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


def latest(run_dir: Path) -> Checkpoint | None:
    """The set ``LATEST`` names, its checksums verified; None when the run has none yet.

    :raises ConfigError: when the pointer, ``state.json`` or a data file is damaged or edited.
    """
    pointer = run_dir / "checkpoints" / LATEST
    if not pointer.exists():
        return None
    where = f"checkpoint of {run_dir}"
    try:
        record = json.loads(pointer.read_text())
        name, state_sha256 = record["name"], record["state_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{where}: {pointer} is damaged") from None
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: {pointer} names no checkpoint set")
    path = run_dir / "checkpoints" / name
    try:
        raw = (path / STATE).read_bytes()
    except OSError:
        raise ConfigError(f"{where}: {path / STATE} is missing") from None
    if hashlib.sha256(raw).hexdigest() != state_sha256:
        raise ConfigError(f"{where}: {path / STATE} does not match its checksum (damaged or edited)")
    try:
        state = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{where}: {path / STATE} is damaged") from None
    files = state.get("files") if isinstance(state, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ConfigError(f"{where}: {path / STATE} lists no checksums")
    for file_name, checksum in files.items():
        file = path / file_name
        if file.parent != path or not file.is_file():
            raise ConfigError(f"{where}: {file_name} is missing")
        if _sha256(file) != checksum:
            raise ConfigError(f"{where}: {file_name} does not match its checksum (damaged or edited)")
    return Checkpoint(path, state)


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Arrays as an ``.npz`` (no pickled objects)."""
    with path.open("wb") as f:
        np.savez(f, **dict(arrays))  # type: ignore[arg-type]


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of :func:`save_arrays`; object arrays are refused, never unpickled."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as err:
        raise ConfigError(f"{path}: not a readable array file ({type(err).__name__})") from None


def load_tensors(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain data, never arbitrary objects."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an unpickling refusal, a truncated file: one line naming the file
        raise ConfigError(f"{path}: not a readable tensor file ({type(err).__name__})") from None
