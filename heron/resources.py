"""Memory a run will need, checked against what the machine can give before anything is allocated.

A size that cannot be allocated (``hidden: [1000000, 1000000]``, ``pairs: 2000000000``, a replay
buffer of 10^12 steps) must end as one line naming the setting before the run starts, not as an
allocator's traceback minutes later. Estimates count the large arrays of each part (parameters with
Adam's state, buffers, pair arrays); they are lower bounds, so a run refused by them could not have
run.
"""

from __future__ import annotations

import itertools
import os
import resource
from collections.abc import Mapping, Sequence
from pathlib import Path

from heron.errors import ConfigError

FLOAT = 4  # bytes of a float32
ADAM = 4  # parameters, gradients and Adam's two moments


def mlp_parameters(widths: Sequence[int]) -> int:
    """Weights and biases of a fully connected network with these layer widths (input first)."""
    return sum((a + 1) * b for a, b in itertools.pairwise(widths))


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def available_bytes() -> int:
    """Memory this process can still use: free memory, a cgroup's limit, and its own address-space limit."""
    candidates = [c for c in (_meminfo_available(), _cgroup_available()) if c is not None]
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            candidates.append(1 << 62)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        candidates.append(soft)
    return min(candidates)


def human(n: float) -> str:
    """Bytes in binary units, e.g. ``3.7 GiB``."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} PiB"


def check_memory(parts: Mapping[str, tuple[int, str]], available: int | None = None) -> None:
    """Refuse a run whose parts cannot fit in memory, naming the largest.

    :param parts: ``{setting: (bytes, what makes it that large)}``.
    :param available: bytes available (default: :func:`available_bytes`).
    :raises ConfigError: when the parts together need more than is available.
    """
    total = sum(size for size, _ in parts.values())
    available = available_bytes() if available is None else available
    if total <= available:
        return
    setting, (size, why) = max(parts.items(), key=lambda item: item[1][0])
    raise ConfigError(
        f"{setting}: needs about {human(size)} of memory ({why}); the run needs {human(total)} in all, "
        f"more than the {human(available)} available"
    )
