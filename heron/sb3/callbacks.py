"""SB3 callbacks, one concern each, combined with SB3's ``CallbackList``.

- :class:`HeronCallback` translates SB3's hooks into :class:`heron.HeronLoop` calls.
- :class:`EvaluationCallback` evaluates on the env's own reward and writes ``metrics.csv``.
- :class:`CheckpointCallback` saves a resumable checkpoint between rollouts.
- :class:`ProgressCallback` shows progress (a bar on a terminal, a line now and then otherwise).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from heron import report
from heron.factors import objectives_of, read_factors
from heron.loop import HeronLoop
from heron.sb3.buffers import OffPolicyAdapter, OnPolicyAdapter
from heron.sb3.vec_env import RewardSwap


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


class Clock:
    """Wall-clock seconds of a run, carried across resumes."""

    def __init__(self, elapsed: float = 0.0) -> None:
        self.before, self.started = elapsed, time.perf_counter()

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.started


class HeronCallback(BaseCallback):
    """Records experience into the loop, refits when the loop's schedule says so, delivers the reward.

    :param loop: the HERON loop.
    :param swap: the reward-swap VecEnv the agent steps (it holds each step's factors).
    :param adapter: the rollout- or replay-buffer adapter of the model being trained.
    """

    def __init__(self, loop: HeronLoop, swap: RewardSwap, adapter: OnPolicyAdapter | OffPolicyAdapter) -> None:
        super().__init__()
        self.loop, self.swap, self.adapter = loop, swap, adapter

    def _on_step(self) -> bool:
        # SB3 calls on_step right after env.step: swap.factors are this step's.
        self.adapter.on_step(self.locals, self.swap.factors)
        return True

    def _on_rollout_end(self) -> None:
        if not self.adapter.pending:
            return
        self.adapter.on_rollout_end(self.locals)
        stats = self.loop.refit() if self.loop.refit_due else {}
        for key, value in stats.items():
            self.logger.record(f"heron/{key}", value)
        self.adapter.deliver(self.locals, refitted=bool(stats))


def evaluate(
    model: BaseAlgorithm,
    env: gym.Env,
    episodes: int,
    factor_names: list[str],
    seed: int,
    objectives: Sequence[str] = (),
    gamma: float = 1.0,
) -> dict[str, float]:
    """Mean and std of the env's own episode return, each factor's mean episode total, and for a
    vector-reward env each objective's mean episode return, undiscounted and discounted by ``gamma``."""
    names = [*factor_names, *objectives]
    returns, totals, discounted = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, ret, total, disc, weight = False, 0.0, np.zeros(len(names)), np.zeros(len(objectives)), 1.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, info = env.step(action)
            ret += float(reward)
            step = np.asarray(read_factors(info, names, "evaluation env"))
            step = np.where(np.isfinite(step), step, 0.0)  # a missing (non-finite) value adds nothing
            total += step
            disc += weight * step[len(factor_names) :]
            weight *= gamma
            done = terminated or truncated
        returns.append(ret)
        totals.append(total)
        discounted.append(disc)
    mean_totals, mean_discounted = np.mean(totals, axis=0), np.mean(discounted, axis=0)
    return {
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        **{f"factor/{n}": float(v) for n, v in zip(factor_names, mean_totals[: len(factor_names)], strict=True)},
        **{f"objective/{n}": float(v) for n, v in zip(objectives, mean_totals[len(factor_names) :], strict=True)},
        **{f"objective_discounted/{n}": float(v) for n, v in zip(objectives, mean_discounted, strict=True)},
    }


class EvaluationCallback(BaseCallback):
    """Every ``every`` env steps, and once at the end, evaluates the deterministic policy on the env's
    own reward. Each row goes to :attr:`metrics`, ``metrics.csv`` and TensorBoard at its own step.

    :param env: the evaluation env (its own instance, never the training env).
    :param factor_names: factors totalled per episode, in order.
    :param episodes: episodes per evaluation.
    :param every: env steps between evaluations.
    :param seed: evaluation ``k`` resets its episodes with seeds ``seed + 10,000 + k + i``.
    :param columns: the columns of ``metrics.csv`` (a vector-reward env adds ``objective/<name>``, its
        episode return, and ``objective_discounted/<name>``, discounted by the agent's ``gamma``).
    :param metrics_file: where the table is written (None: nowhere).
    :param clock: the run's wall clock.
    :param diagnostics: the latest reward-learning diagnostics, added to each row.
    """

    def __init__(
        self,
        env: gym.Env,
        factor_names: list[str],
        episodes: int,
        every: int,
        seed: int,
        columns: Sequence[str],
        metrics_file: Path | None,
        clock: Clock,
        diagnostics: Callable[[], Mapping[str, float]],
    ) -> None:
        super().__init__()
        self.env, self.factor_names, self.episodes, self.every, self.seed = env, factor_names, episodes, every, seed
        self.objectives = objectives_of(env)  # a vector-reward env: its objectives' returns are columns too
        columns = [*columns, *report.objective_columns(self.objectives)]
        self.columns, self.metrics_file, self.clock, self.diagnostics = columns, metrics_file, clock, diagnostics
        self.metrics: list[dict[str, Any]] = []
        self.last_eval = 0

    @property
    def last_return(self) -> float:
        return float(self.metrics[-1]["return_mean"]) if self.metrics else math.nan

    def _on_step(self) -> bool:
        if self.num_timesteps - self.last_eval >= self.every:
            self.evaluate()
        return True

    def _on_training_end(self) -> None:
        if not self.metrics or self.metrics[-1]["step"] != self.num_timesteps:
            self.evaluate()

    def evaluate(self) -> None:
        self.last_eval = self.num_timesteps
        seed = self.seed + 10_000 + len(self.metrics)
        row = {
            "step": self.num_timesteps,
            "wall_clock_s": self.clock(),
            **evaluate(
                self.model,
                self.env,
                self.episodes,
                self.factor_names,
                seed,
                self.objectives,
                float(getattr(self.model, "gamma", 1.0)),
            ),
            **self.diagnostics(),
        }
        self.metrics.append(row)
        objective_keys = report.objective_columns(self.objectives)
        for key in ("return_mean", "return_std", *(f"factor/{n}" for n in self.factor_names), *objective_keys):
            self.logger.record(f"eval/{key}", row[key])
        self.logger.dump(self.num_timesteps)  # at the evaluation's own step, not at the next rollout's
        if self.metrics_file is not None:
            report.write_metrics(self.metrics_file, self.metrics, self.columns)

    def state_dict(self) -> dict[str, Any]:
        """The evaluations so far (NaN as None: a checkpoint is strict JSON) and the last evaluation's step."""
        rows = [[None if _nan(row.get(c)) else row.get(c) for c in self.columns] for row in self.metrics]
        return {"last_eval": self.last_eval, "columns": list(self.columns), "metrics": rows}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint: its evaluations replace whatever ``metrics.csv`` holds now (a
        deleted, damaged or edited table loses nothing), and the table is written again from them."""
        columns, rows = list(state["columns"]), list(state["metrics"])
        if columns != list(self.columns) or not all(isinstance(r, list) and len(r) == len(columns) for r in rows):
            raise ValueError("evaluations do not fit this run's columns")
        self.metrics = [
            {c: math.nan if v is None else float(v) for c, v in zip(columns, row, strict=True)} for row in rows
        ]
        self.last_eval = int(state["last_eval"])
        if self.metrics_file is not None:
            report.write_metrics(self.metrics_file, self.metrics, self.columns)


class CheckpointCallback(BaseCallback):
    """Saves a checkpoint at the start of a rollout once ``every`` env steps have passed, and at the end.

    :param every: env steps between checkpoints.
    :param save: writes one checkpoint (the run knows what it holds).
    """

    def __init__(self, every: int, save: Callable[[], None]) -> None:
        super().__init__()
        self.every, self.save = every, save
        self.last = 0

    def _on_rollout_start(self) -> None:
        # SB3 calls on_rollout_start before collecting, after the previous rollout was recorded,
        # rewarded and trained on: nothing is half done, so a resumed run continues exactly here
        # and trains to the same total as an uninterrupted one.
        if self.num_timesteps - self.last >= self.every:
            self.checkpoint()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self.checkpoint()

    def checkpoint(self) -> None:
        self.last = self.num_timesteps
        self.save()


class ProgressCallback(BaseCallback):
    """Steps, speed and the latest evaluated return: a rich bar on a terminal, else a line every ``interval_s``.

    :param total: the run's env steps.
    :param last_return: the latest evaluated return.
    :param interval_s: seconds between lines when the output is not a terminal.
    """

    def __init__(self, total: int, last_return: Callable[[], float], interval_s: float = 30.0) -> None:
        super().__init__()
        self.total, self.last_return, self.interval_s = total, last_return, interval_s
        self.bar: Any = None
        self.start_step, self.t0, self.last_line = 0, 0.0, 0.0

    def _on_training_start(self) -> None:
        self.start_step, self.t0 = self.num_timesteps, time.perf_counter()
        self.last_line = self.t0
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[speed]:>7.0f} steps/s"),
                TextColumn("return {task.fields[ret]}"),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("train", total=self.total, completed=self.num_timesteps, speed=0.0, ret="-")
            self.bar.start()

    def _fields(self) -> tuple[float, str]:
        speed = (self.num_timesteps - self.start_step) / max(time.perf_counter() - self.t0, 1e-9)
        ret = self.last_return()
        return speed, "-" if math.isnan(ret) else f"{ret:.1f}"

    def _on_step(self) -> bool:
        if self.bar is not None:
            speed, ret = self._fields()
            self.bar.update(self.task, completed=self.num_timesteps, speed=speed, ret=ret)
        elif time.perf_counter() - self.last_line >= self.interval_s:
            self._line()
        return True

    def _line(self) -> None:
        self.last_line = time.perf_counter()
        speed, ret = self._fields()
        share = 100 * self.num_timesteps / max(self.total, 1)
        print(
            f"training {self.num_timesteps}/{self.total} steps ({share:.0f}%), {speed:.0f} steps/s, return {ret}",
            file=sys.stderr,
            flush=True,
        )

    def _on_training_end(self) -> None:
        # Runs after the evaluation callback's final evaluation: the bar ends on the final return.
        if self.bar is not None:
            speed, ret = self._fields()
            self.bar.update(self.task, completed=self.num_timesteps, speed=speed, ret=ret)
            self.bar.stop()
        else:
            self._line()
