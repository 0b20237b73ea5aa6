"""Traffic signal control on real SUMO networks (``pip install heron-rl[traffic]``).

:class:`TrafficEnv` controls every traffic light of a SUMO network. It has one slot per
intersection: the observation is an ``(n_lights, obs_dim)`` array, the action one green phase per
light, and ``num_slots`` tells heron to train one shared policy on all intersections (see
:class:`heron.sb3.vec_env.SlotVecEnv`). Control, observation and reward follow sumo-rl's TrafficSignal:

- a light's action picks its next green phase (an action at or above the light's own number of
  green phases wraps around, modulo); switching shows ``yellow_time`` seconds of yellow first and
  is ignored until the current phase has lasted ``yellow_time + min_green`` seconds;
- a light's observation row is ``[green phase one-hot, min-green passed, lane densities, lane
  queues]`` over its incoming lanes, zero-padded to the widest light;
- the env reward is the sum over lights of sumo-rl's ``diff-waiting-time``: the drop, divided by
  100, in the waiting time of the vehicles on the light's incoming lanes.

Factors per light and step (``info["slot_factors"]``; their sum over lights is ``info["factors"]``):

- ``queue``: halting vehicles (below 0.1 m/s) on the incoming lanes (min);
- ``waiting_time``: mean waiting time (s) of the vehicles on the incoming lanes, as booked for the reward (min);
- ``delay``: 1 - mean of speed / allowed speed over those vehicles, 0 without vehicles (min);
- ``throughput``: vehicles that left the incoming lanes during the step (max);
- ``switches``: 1 if the light started a phase change this step (min);
- ``safety``: vehicles that braked harder than their comfortable maximum deceleration (SUMO's
  emergency braking), started teleporting or collided, booked to the light whose incoming or
  junction lanes they were on, else split evenly over all lights (min).

``info["slot_rewards"]`` holds each light's reward. Each simulation runs in a child process of
its own (libsumo allows one simulation per process); a simulator that dies or stops answering
is killed and replaced, and the step it happened in ends the episode (``truncated``, with
``info["sim_restarted"] = True``, reward 0 and every factor NaN: missing, not measured).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from heron.envs._sumo_worker import FACTORS
from heron.errors import ConfigError

BACKENDS = ("libsumo", "traci")
_WORKER = str(Path(__file__).with_name("_sumo_worker.py"))
# Run the worker by path with neither the working directory nor heron/envs on sys.path.
_BOOT = (
    "import runpy, sys; sys.path = [p for p in sys.path if p]; del sys.argv[0];"
    " runpy.run_path(sys.argv[0], run_name='__main__')"
)

PathLike = str | os.PathLike[str]


class SimulatorFault(RuntimeError):
    """The simulator process died or did not answer in time."""


class SimulatorError(RuntimeError):
    """The simulator reported an error (SUMO's, or a bad request)."""


def sumo_home() -> str:
    """SUMO_HOME, from the ``eclipse-sumo`` package when the variable is unset (then set it)."""
    if "SUMO_HOME" not in os.environ:
        try:
            import sumo
        except ImportError:
            raise gym.error.DependencyNotInstalled(
                "SUMO is not installed: pip install 'heron-rl[traffic]' (eclipse-sumo)"
            ) from None
        os.environ["SUMO_HOME"] = sumo.SUMO_HOME
    return os.environ["SUMO_HOME"]


def _backend(name: str) -> str:
    if name not in BACKENDS:
        raise ConfigError(f"backend: must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "libsumo" and importlib.util.find_spec("libsumo") is None:
        warnings.warn("libsumo is not installed: running SUMO over TraCI (slower)", stacklevel=3)
        name = "traci"
    if importlib.util.find_spec(name) is None:
        raise gym.error.DependencyNotInstalled(f"{name} is not installed: pip install 'heron-rl[traffic]'")
    return name


class _Simulator:
    """One simulator process and the socket the env talks to it over.

    :param config: the worker's config (see heron/envs/_sumo_worker.py).
    :param timeout: seconds to wait for the process to start.
    """

    def __init__(self, config: dict[str, Any], timeout: float) -> None:
        parent, child = socket.socketpair()
        with child:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _WORKER, str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.conn = Connection(parent.detach())
        try:
            self.call(("init", config), timeout)
        except BaseException:
            self.kill()
            raise

    def call(self, message: tuple[Any, ...], timeout: float) -> list[Any]:
        """Send one message and return the answer's payload.

        :raises SimulatorFault: when the process is gone or does not answer within ``timeout``.
        :raises SimulatorError: when the simulator reports an error.
        """
        try:
            self.conn.send(message)
            if not self.conn.poll(timeout):
                raise SimulatorFault(f"the simulator did not answer {message[0]!r} within {timeout:g} s")
            status, *payload = self.conn.recv()
        except (EOFError, OSError) as err:
            raise SimulatorFault(f"the simulator process is gone ({type(err).__name__})") from None
        if status == "error":
            raise SimulatorError(f"simulator: {payload[0]}")
        return payload

    def kill(self) -> None:
        """Kill the process and whatever it started (the sumo binary under TraCI)."""
        if self.process.returncode is None:  # not reaped yet, so the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.conn.close()

    def close(self, timeout: float = 10.0) -> None:
        """Ask the process to stop; kill it if it does not within ``timeout`` seconds."""
        try:
            self.conn.send(("close",))
            self.process.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class TrafficEnv(gym.Env[np.ndarray, np.ndarray]):
    """Every traffic light of a SUMO network, one slot per intersection (see the module docstring).

    :param net_file: the SUMO network (``.net.xml``).
    :param route_file: the demand (``.rou.xml``), or several route files.
    :param num_seconds: simulated seconds per episode.
    :param begin_time: the simulation time an episode starts at (s).
    :param delta_time: simulated seconds per env step.
    :param yellow_time: seconds of yellow between two green phases (at least 1, below ``delta_time``).
    :param min_green: minimum seconds of green before a light may switch again.
    :param time_to_teleport: SUMO's ``--time-to-teleport`` (-1, sumo-rl's default: never teleport jammed vehicles).
    :param backend: ``"libsumo"`` (fast; falls back to TraCI with a warning when not installed) or ``"traci"``.
    :param seed: seeds the first reset that gets no seed (each reset draws SUMO's seed from the env's RNG).
    :param step_timeout: seconds a step may take before the simulator counts as hung and is replaced.
    :param start_timeout: seconds to start the simulator process or load a simulation.
    :raises ConfigError: for a missing file or a bad parameter.
    """

    def __init__(
        self,
        net_file: PathLike,
        route_file: PathLike | Sequence[PathLike],
        *,
        num_seconds: int = 3600,
        begin_time: int = 0,
        delta_time: int = 5,
        yellow_time: int = 2,
        min_green: int = 5,
        time_to_teleport: int = -1,
        backend: str = "libsumo",
        seed: int | None = None,
        step_timeout: float = 60.0,
        start_timeout: float = 120.0,
    ) -> None:
        if os.name != "posix":
            raise ConfigError("TrafficEnv runs SUMO in a child process over a Unix socket pair: POSIX only")
        routes = [route_file] if isinstance(route_file, str | os.PathLike) else list(route_file)
        for what, path in [("net_file", net_file), *(("route_file", r) for r in routes)]:
            if not Path(path).is_file():
                raise ConfigError(f"{what}: no such file {str(path)!r}")
        for name, value, low in [
            ("num_seconds", num_seconds, 1),
            ("begin_time", begin_time, 0),
            ("delta_time", delta_time, 1),
            ("yellow_time", yellow_time, 1),
            ("min_green", min_green, 0),
        ]:
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{name}: must be an integer >= {low}, got {value!r}")
        if yellow_time >= delta_time:
            raise ConfigError(f"yellow_time: must be below delta_time ({delta_time}), got {yellow_time}")
        if not (step_timeout > 0 and start_timeout > 0):
            raise ConfigError(f"step_timeout, start_timeout: must be > 0, got {step_timeout!r}, {start_timeout!r}")
        self._kwargs: dict[str, Any] = {
            "net_file": net_file,
            "route_file": route_file,
            "num_seconds": num_seconds,
            "begin_time": begin_time,
            "delta_time": delta_time,
            "yellow_time": yellow_time,
            "min_green": min_green,
            "time_to_teleport": time_to_teleport,
            "backend": backend,
            "seed": seed,
            "step_timeout": step_timeout,
            "start_timeout": start_timeout,
        }
        self.backend = _backend(backend)
        timing = ("num_seconds", "begin_time", "delta_time", "yellow_time", "min_green", "time_to_teleport")
        self._config = {
            **{k: self._kwargs[k] for k in timing},
            "net_file": str(Path(net_file).resolve()),
            "route_files": [str(Path(r).resolve()) for r in routes],
            "sumo_binary": str(Path(sumo_home()) / "bin" / "sumo"),
            "backend": self.backend,
        }
        self.step_timeout = float(step_timeout)
        self.start_timeout = float(start_timeout)
        self._seed = seed
        self._sim = _Simulator(self._config, self.start_timeout)
        try:
            ids, greens, obs_dim = self._sim.call(("describe",), self.start_timeout)
        except SimulatorError as err:
            self._sim.kill()
            raise ConfigError(f"net_file: {net_file}: {err}".splitlines()[0]) from None
        except BaseException:
            self._sim.kill()
            raise
        self.light_ids: list[str] = ids
        self.green_phases = np.array(greens, dtype=np.int64)
        self.num_slots: int = len(ids)
        self.observation_space = spaces.Box(0.0, 1.0, (self.num_slots, obs_dim), dtype=np.float32)
        self.action_space = spaces.MultiDiscrete(np.full(self.num_slots, int(self.green_phases.max())))
        self._last_obs = np.zeros(self.observation_space.shape, dtype=np.float32)

    @property
    def sim_pid(self) -> int:
        """The process id of the current simulator process."""
        return self._sim.process.pid

    def _restart(self) -> None:
        self._sim.kill()
        self._sim = _Simulator(self._config, self.start_timeout)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        if seed is None:
            seed, self._seed = self._seed, None
        super().reset(seed=seed)
        sumo_seed = int(self.np_random.integers(2**31 - 1))
        try:
            (obs,) = self._sim.call(("reset", sumo_seed), self.start_timeout)
        except SimulatorFault:
            self._restart()
            (obs,) = self._sim.call(("reset", sumo_seed), self.start_timeout)
        self._last_obs = obs
        return obs, {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        actions = np.asarray(action, dtype=np.int64).reshape(self.num_slots)
        try:
            obs, rewards, factors, done = self._sim.call(("step", actions), self.step_timeout)
        except SimulatorFault:
            self._restart()
            # Nothing was measured: every factor is missing (NaN), not 0, which is the best value
            # of a cost. heron keeps such steps out of labels, rewards and statistics.
            info = self._info(np.zeros(self.num_slots), np.full((self.num_slots, len(FACTORS)), np.nan))
            info["sim_restarted"] = True
            return self._last_obs, 0.0, False, True, info
        self._last_obs = obs
        return obs, float(rewards.sum()), False, done, self._info(rewards, factors)

    def _info(self, rewards: np.ndarray, factors: np.ndarray) -> dict[str, Any]:
        return {
            "factors": dict(zip(FACTORS, factors.sum(axis=0).tolist(), strict=True)),
            "slot_factors": [dict(zip(FACTORS, row, strict=True)) for row in factors.tolist()],
            "slot_rewards": rewards.tolist(),
        }

    def close(self) -> None:
        self._sim.close()

    def __deepcopy__(self, memo: dict[int, Any]) -> TrafficEnv:
        """A fresh env on the same network with its own simulator (a process cannot be copied)."""
        return TrafficEnv(**copy.deepcopy(self._kwargs, memo))


def _nets() -> Path:
    spec = importlib.util.find_spec("sumo_rl")
    if spec is None or not spec.submodule_search_locations:
        raise gym.error.DependencyNotInstalled("sumo-rl is not installed: pip install 'heron-rl[traffic]'")
    return Path(next(iter(spec.submodule_search_locations))) / "nets"


def _shipped(net: str, route: str, defaults: dict[str, Any], kwargs: dict[str, Any]) -> TrafficEnv:
    nets = _nets()
    return TrafficEnv(nets / net, nets / route, **{**defaults, **kwargs})


def make_single(**kwargs: Any) -> TrafficEnv:
    """sumo-rl's single intersection (1 light, 2 green phases), one hour; kwargs go to :class:`TrafficEnv`."""
    return _shipped(
        "single-intersection/single-intersection.net.xml",
        "single-intersection/single-intersection.rou.xml",
        {"num_seconds": 3600},
        kwargs,
    )


def make_grid2x2(**kwargs: Any) -> TrafficEnv:
    """sumo-rl's 2x2 grid (4 lights), one hour; kwargs go to :class:`TrafficEnv`."""
    return _shipped("2x2grid/2x2.net.xml", "2x2grid/2x2.rou.xml", {"num_seconds": 3600}, kwargs)


def make_cologne8(**kwargs: Any) -> TrafficEnv:
    """RESCO's Cologne (8 heterogeneous lights, real demand), 7:00-8:00; kwargs go to :class:`TrafficEnv`."""
    return _shipped(
        "RESCO/cologne8/cologne8.net.xml",
        "RESCO/cologne8/cologne8.rou.xml",
        {"begin_time": 25200, "num_seconds": 3600},
        kwargs,
    )


def make_network(
    net_file: PathLike | None = None, route_file: PathLike | Sequence[PathLike] | None = None, **kwargs: Any
) -> TrafficEnv:
    """Your own SUMO network: ``net_file`` and ``route_file`` are required; kwargs go to :class:`TrafficEnv`."""
    if net_file is None or route_file is None:
        raise ConfigError("env_kwargs: heron/Traffic-v0 needs net_file and route_file")
    return TrafficEnv(net_file, route_file, **kwargs)
