"""The simulator side of heron's traffic envs: one SUMO simulation in its own process.

heron/envs/traffic.py runs this file as a script (``python -c <bootstrap> this_file FD``) and
talks to it over the socket ``FD`` with :class:`multiprocessing.connection.Connection` messages.
It never imports heron (nor torch): a simulator process starts in about half a second, and
libsumo, which allows one simulation per process, gets a process of its own.

Messages, each answered with ``("ok", *payload)`` or ``("error", one_line)``:

- ``("init", config)``: remember the config (see ``TrafficEnv._config``); payload empty.
- ``("describe",)``: load the network alone; payload ``(light_ids, green_phase_counts, obs_dim)``.
- ``("reset", sumo_seed)``: start a fresh simulation; payload ``(obs,)``.
- ``("step", actions)``: act, simulate ``delta_time`` seconds; payload ``(obs, rewards, factors, done)``.
- ``("close",)``: stop; no answer.

The control, the observation and the ground-truth reward follow sumo-rl's TrafficSignal
(green phases read from the program, a yellow transition between greens, a minimum green time,
``diff-waiting-time``), for every traffic light of the network at once.
"""

from __future__ import annotations

import importlib
import sys
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

FACTORS = ("queue", "waiting_time", "delay", "throughput", "switches", "safety")
MIN_GAP = 2.5
"""SUMO's default minimum gap between vehicles (m), used by sumo-rl's lane capacity."""
BRAKE_TOLERANCE = 1e-3
"""Deceleration (m/s^2) beyond a vehicle's comfortable maximum that counts as emergency braking."""


class Simulation:
    """One SUMO simulation of a network whose traffic lights are all controlled.

    :param config: ``net_file``, ``route_files``, ``sumo_binary``, ``backend``, ``begin_time``,
        ``num_seconds``, ``delta_time``, ``yellow_time``, ``min_green``, ``time_to_teleport``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = config
        self.api: Any = importlib.import_module(config["backend"])
        self.tc: Any = importlib.import_module("traci.constants")
        self.running = False
        self.ready = False

    # -- structure ---------------------------------------------------------------------------------
    def _start(self, options: list[str]) -> None:
        options = [*options, "--no-step-log", "true", "--no-warnings", "true"]
        if self.running:
            self.api.load(options)
        else:
            self.api.start([self.cfg["sumo_binary"], *options])
            self.running = True

    def _read_lights(self) -> None:
        """Green phases, incoming lanes and junction-internal lanes of every traffic light."""
        tl = self.api.trafficlight
        self.ids = list(tl.getIDList())
        if not self.ids:
            raise ValueError(f"network {self.cfg['net_file']} has no traffic lights")
        self.greens: list[list[str]] = []
        lanes: list[list[str]] = []
        self.zone: dict[str, int] = {}
        for k, light in enumerate(self.ids):
            states = [p.state for p in tl.getAllProgramLogics(light)[0].phases]
            greens = [s for s in states if "y" not in s and s.count("r") + s.count("s") != len(s)]
            if not greens:
                raise ValueError(f"traffic light {light!r} has no green phase")
            self.greens.append(greens)
            lanes.append(list(dict.fromkeys(tl.getControlledLanes(light))))
            for group in tl.getControlledLinks(light):
                for incoming, _, via in group:
                    self.zone.setdefault(incoming, k)
                    if via:
                        self.zone.setdefault(via, k)
        self.lane_counts = [len(x) for x in lanes]
        self.lanes = [lane for group in lanes for lane in group]
        self.lane_light = np.repeat(np.arange(len(self.ids)), self.lane_counts)
        self.light_of = {lane: int(k) for lane, k in zip(self.lanes, self.lane_light, strict=True)}
        self.n_green = np.array([len(g) for g in self.greens])
        lane_counts = np.array(self.lane_counts)
        position = np.concatenate([np.arange(c) for c in lane_counts])
        self.density_col = self.n_green[self.lane_light] + 1 + position
        self.queue_col = self.density_col + lane_counts[self.lane_light]
        self.obs_dim = int(np.max(self.n_green + 1 + 2 * lane_counts))

    def describe(self) -> tuple[list[str], list[int], int]:
        self.ready = False
        # The begin time too: TraCI does not advance after a load that moves the begin time.
        self._start(["-n", self.cfg["net_file"], "--begin", str(self.cfg["begin_time"])])
        self._read_lights()
        return self.ids, self.n_green.tolist(), self.obs_dim

    # -- episode -----------------------------------------------------------------------------------
    def reset(self, sumo_seed: int) -> tuple[np.ndarray]:
        cfg, tc = self.cfg, self.tc
        self.ready = False
        self._start(
            [
                "-n",
                cfg["net_file"],
                "-r",
                ",".join(cfg["route_files"]),
                "--begin",
                str(cfg["begin_time"]),
                "--seed",
                str(sumo_seed),
                "--waiting-time-memory",
                "1000",
                "--time-to-teleport",
                str(cfg["time_to_teleport"]),
            ]
        )
        self._read_lights()
        api = self.api
        n = len(self.ids)
        self.end_time = cfg["begin_time"] + cfg["num_seconds"]
        self.green = np.zeros(n, dtype=np.int64)
        self.since = np.zeros(n, dtype=np.int64)
        self.yellow = np.zeros(n, dtype=bool)
        for light, greens in zip(self.ids, self.greens, strict=True):
            api.trafficlight.setRedYellowGreenState(light, greens[0])
        self.lane_length = np.array([api.lane.getLength(lane) for lane in self.lanes])
        lane_vars = [tc.LAST_STEP_VEHICLE_NUMBER, tc.LAST_STEP_VEHICLE_HALTING_NUMBER, tc.LAST_STEP_LENGTH]
        for lane in dict.fromkeys(self.lanes):
            api.lane.subscribe(lane, lane_vars)
        api.simulation.subscribe(
            [
                tc.VAR_DEPARTED_VEHICLES_IDS,
                tc.VAR_ARRIVED_VEHICLES_IDS,
                tc.VAR_TELEPORT_STARTING_VEHICLES_IDS,
                tc.VAR_COLLIDING_VEHICLES_IDS,
            ]
        )
        self.vehicle_vars = [
            tc.VAR_LANE_ID,
            tc.VAR_ACCUMULATED_WAITING_TIME,
            tc.VAR_SPEED,
            tc.VAR_ALLOWED_SPEED,
            tc.VAR_ACCELERATION,
            tc.VAR_DECEL,
        ]
        self.vehicles: dict[str, dict[int, Any]] = {}
        self.waits: dict[str, dict[str, float]] = {}
        self.present: list[set[str]] = [set() for _ in range(n)]
        obs, self.last_wait, _ = self._measure()
        self.ready = True
        return (obs,)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        if not self.ready:
            raise RuntimeError("no simulation is running: reset the env first")
        cfg, api = self.cfg, self.api
        target = np.asarray(actions, dtype=np.int64) % self.n_green
        switch = (target != self.green) & (self.since >= cfg["yellow_time"] + cfg["min_green"])
        for k in np.flatnonzero(switch):
            api.trafficlight.setRedYellowGreenState(self.ids[k], self._yellow(int(k), int(target[k])))
        self.green = np.where(switch, target, self.green)
        self.since[switch] = 0
        self.yellow |= switch
        safety = np.zeros(len(self.ids))
        for _ in range(cfg["delta_time"]):
            api.simulationStep()
            self.since += 1
            ending = self.yellow & (self.since == cfg["yellow_time"])
            for k in np.flatnonzero(ending):
                api.trafficlight.setRedYellowGreenState(self.ids[k], self.greens[k][self.green[k]])
            self.yellow &= ~ending
            safety += self._events()
        obs, wait, measures = self._measure()
        rewards = (self.last_wait - wait) / 100.0
        self.last_wait = wait
        factors = np.column_stack([*measures, switch.astype(np.float64), safety])
        done = bool(api.simulation.getTime() >= self.end_time)
        return obs, rewards, factors, done

    def _yellow(self, k: int, target: int) -> str:
        """The transition from light ``k``'s current green to its green ``target``."""
        now, then = self.greens[k][self.green[k]], self.greens[k][target]
        return "".join("y" if a in "Gg" and b in "rs" else a for a, b in zip(now, then, strict=True))

    def _events(self) -> np.ndarray:
        """Subscribe new vehicles; count this second's emergency braking, teleports and collisions."""
        api, tc = self.api, self.tc
        sim = api.simulation.getSubscriptionResults()
        for vehicle in sim[tc.VAR_DEPARTED_VEHICLES_IDS]:
            api.vehicle.subscribe(vehicle, self.vehicle_vars)
        for vehicle in sim[tc.VAR_ARRIVED_VEHICLES_IDS]:
            self.waits.pop(vehicle, None)
        before = self.vehicles
        self.vehicles = api.vehicle.getAllSubscriptionResults()
        lanes = [
            v[tc.VAR_LANE_ID]
            for v in self.vehicles.values()
            if v[tc.VAR_ACCELERATION] < -v[tc.VAR_DECEL] - BRAKE_TOLERANCE
        ]
        for vehicle in (*sim[tc.VAR_TELEPORT_STARTING_VEHICLES_IDS], *sim[tc.VAR_COLLIDING_VEHICLES_IDS]):
            lanes.append(before.get(vehicle, {}).get(tc.VAR_LANE_ID, ""))
        counts = np.zeros(len(self.ids))
        for lane in lanes:
            k = self.zone.get(lane)
            if k is None:
                counts += 1.0 / len(self.ids)
            else:
                counts[k] += 1.0
        return counts

    def _measure(self) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Observation, lane-attributed waiting time per light, and queue, waiting, delay, throughput."""
        api, tc = self.api, self.tc
        n = len(self.ids)
        lanes = api.lane.getAllSubscriptionResults()
        stats = np.array(
            [
                [r[tc.LAST_STEP_VEHICLE_NUMBER], r[tc.LAST_STEP_VEHICLE_HALTING_NUMBER], r[tc.LAST_STEP_LENGTH]]
                for r in (lanes[lane] for lane in self.lanes)
            ],
            dtype=np.float64,
        )
        capacity = self.lane_length / (MIN_GAP + stats[:, 2])
        obs = np.zeros((n, self.obs_dim), dtype=np.float32)
        rows = np.arange(n)
        obs[rows, self.green] = 1.0
        obs[rows, self.n_green] = self.since >= self.cfg["min_green"] + self.cfg["yellow_time"]
        obs[self.lane_light, self.density_col] = np.minimum(1.0, stats[:, 0] / capacity)
        obs[self.lane_light, self.queue_col] = np.minimum(1.0, stats[:, 1] / capacity)
        queue = np.bincount(self.lane_light, stats[:, 1], minlength=n)

        # Per vehicle on an incoming lane: its waiting time on that lane (sumo-rl's bookkeeping:
        # the accumulated waiting time less what was already booked on its earlier lanes).
        wait, count, speed = np.zeros(n), np.zeros(n), np.zeros(n)
        present: list[set[str]] = [set() for _ in range(n)]
        for vehicle, v in self.vehicles.items():
            lane = v[tc.VAR_LANE_ID]
            k = self.light_of.get(lane)
            if k is None:
                continue
            booked = self.waits.setdefault(vehicle, {})
            own = v[tc.VAR_ACCUMULATED_WAITING_TIME] - (sum(booked.values()) - booked.get(lane, 0.0))
            booked[lane] = own
            wait[k] += own
            count[k] += 1.0
            speed[k] += v[tc.VAR_SPEED] / max(v[tc.VAR_ALLOWED_SPEED], 1e-6)
            present[k].add(vehicle)
        seen = np.maximum(count, 1.0)
        throughput = np.array([len(a - b) for a, b in zip(self.present, present, strict=True)], dtype=np.float64)
        self.present = present
        delay = np.where(count > 0, 1.0 - speed / seen, 0.0)
        return obs, wait, [queue, wait / seen, delay, throughput]

    def close(self) -> None:
        if self.running:
            self.api.close()
            self.running = False


def serve(conn: Connection) -> None:
    """Answer the env's messages until it says ``close`` or goes away."""
    simulation: Simulation | None = None
    while True:
        try:
            command, *args = conn.recv()
        except EOFError:
            break
        if command == "close":
            break
        try:
            reply: tuple[Any, ...] = ()
            if command == "init":
                simulation = Simulation(*args)
            elif simulation is None or command not in ("describe", "reset", "step"):
                raise ValueError(f"unexpected command {command!r}")
            else:
                reply = getattr(simulation, command)(*args)
        except Exception as err:  # report it to the env, which raises it there
            conn.send(("error", f"{type(err).__name__}: {err}".strip().splitlines()[0]))
        else:
            conn.send(("ok", *reply))
    if simulation is not None:
        simulation.close()


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
