"""``heron compare``: every (method, seed) run of one config, locally or on Ray, resumable.

A config trains an SB3 agent on an env (runs sit on top of :func:`heron.sb3.run.run_config` and
:func:`heron.sb3.run.resume`: a killed sweep loses only the work since each run's last checkpoint),
a code-generation policy (:func:`heron.code.run_code`) or an online language-model policy
(:func:`heron.lm.run_lm`); the last two have no checkpoint mid-run, so a killed run starts over and a
run with its ``eval.json`` is complete. Every kind writes a ``metrics.csv`` with ``step``,
``return_mean`` and ``wall_clock_s``, so the summary table and plots are the same.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, get_args

from heron import checkpoints, report
from heron.config import METHODS, config_kind, load_sweep, validate
from heron.envs import REGISTRY
from heron.errors import ConfigError
from heron.experiments.pareto import report_sweep, settings
from heron.experiments.summary import summarize, write_summary

_NOISE = re.compile(r"^heron-noise(\d+(?:\.\d+)?)$")
SWAP = "heron-swap"


@dataclass(frozen=True)
class Job:
    """One training run of a sweep."""

    method: str
    seed: int
    config: dict[str, Any]
    run_dir: Path


@dataclass(frozen=True)
class Outcome:
    """How a job ended: ``done``, ``skipped`` (already complete) or ``failed`` (with the error line)."""

    method: str
    seed: int
    status: str
    message: str = ""


def resolve_method(base: dict[str, Any], name: str, variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run config of one method name.

    Names: a base method (``heron``, ``ground-truth``, ``weighted-sum``, ``flat-preference``), a
    variant of the config, ``heron-noiseP`` (HERON with teacher noise P, e.g. ``heron-noise0.1``),
    or ``heron-swap`` (HERON with the top two factors of the ranking swapped).
    """
    config = copy.deepcopy(base)
    kind = config_kind(config)
    if name in variants:
        overrides = copy.deepcopy(variants[name])
        config["method"] = overrides.pop("method", "heron")
        _merge(config, overrides)
    elif kind != "control":
        _text_method(config, kind, name, variants)
    elif name in METHODS:
        config["method"] = name
    elif (match := _NOISE.match(name)) is not None:
        config["method"] = "heron"
        config.setdefault("comparison", {})["teacher_noise"] = float(match.group(1))
    elif name == SWAP:
        config["method"] = "heron"
        ranking = config.get("hierarchy") or _default_ranking(config)
        if len(ranking) < 2:
            raise ConfigError("heron-swap: the ranking has fewer than two factors")
        config["hierarchy"] = [ranking[1], ranking[0], *ranking[2:]]
    else:
        raise ConfigError(
            f"unknown method {name!r} (choose from {', '.join(METHODS)}, heron-noiseP, {SWAP}, "
            f"or a variant of the config: {', '.join(variants) or 'none defined'})"
        )
    if kind == "control":
        validate(config, f"method {name}")
    else:
        _validate_text(kind, config, f"method {name}")
    return config


def _text_module(kind: str) -> Any:
    """The module that trains a code (``heron.code.train``) or language-model (``heron.lm.online``) config."""
    import importlib

    return importlib.import_module("heron.code.train" if kind == "code" else "heron.lm.online")


def _validate_text(kind: str, config: dict[str, Any], source: str) -> Any:
    module = _text_module(kind)
    if kind == "lm" and not module.is_online(config):
        raise ConfigError(f"{source}: heron compare trains online language-model configs (trainer: grpo or rloo)")
    return module.validate(config, source) if kind == "code" else module.validate_online(config, source)


def _text_method(config: dict[str, Any], kind: str, name: str, variants: dict[str, dict[str, Any]]) -> None:
    """Set a code or language-model config's method: one of its own, or ``heron-swap``."""
    schema = _text_module(kind).CodeTrainConfig if kind == "code" else _text_module(kind).OnlineConfig
    methods = get_args(schema.model_fields["method"].annotation)
    if name in methods:
        config["method"] = name
    elif name == SWAP:
        config["method"] = "heron"
        ranking = _validate_text(kind, config, f"method {SWAP}").hierarchy  # "a>b>c" (lm) or factors (code)
        levels: list[Any] = ranking.split(">") if isinstance(ranking, str) else [f.model_dump() for f in ranking]
        if len(levels) < 2:
            raise ConfigError("heron-swap: the ranking has fewer than two factors")
        levels = [levels[1], levels[0], *levels[2:]]
        config["hierarchy"] = ">".join(levels) if isinstance(ranking, str) else levels
    else:
        raise ConfigError(
            f"unknown method {name!r} for a {kind} config (choose from {', '.join(methods)}, {SWAP}, "
            f"or a variant of the config: {', '.join(variants) or 'none defined'})"
        )


def _default_ranking(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The ranking of a config without a hierarchy: the registered env's, or a vector-reward env's objectives."""
    env = config["env"]
    if env in REGISTRY:
        return REGISTRY[env].as_json()["hierarchy"]
    hierarchy = validate(config, f"method {SWAP}").hierarchy  # objectives, in order, make the ranking
    if hierarchy is None:
        raise ConfigError(f"heron-swap: env {env} has no default ranking; give a hierarchy")
    return [f.model_dump() for f in hierarchy]


def _merge(into: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def plan(
    base: dict[str, Any], methods: Sequence[str], seeds: Sequence[int], variants: dict[str, dict[str, Any]], out: Path
) -> list[Job]:
    """Every (method, seed) job, validated before anything runs."""
    if not methods:
        raise ConfigError("--methods: give at least one method")
    if len(set(methods)) != len(methods):
        raise ConfigError("--methods: a method is listed twice")
    jobs = []
    for method in methods:
        config = resolve_method(base, method, variants)
        for seed in seeds:
            jobs.append(Job(method, seed, {**config, "seed": seed}, out / "runs" / method / f"seed{seed}"))
    return jobs


def run_job(job: Job, on_checkpoint: Callable[[Path], None] | None = None) -> Outcome:
    """Train, resume or skip one job; failures are reported, never raised.

    :param on_checkpoint: called with each checkpoint set's folder once the run's ``LATEST`` names it.
    """
    from heron.sb3.run import resume, run_config

    kind = config_kind(job.config)
    try:
        if kind != "control":
            if (job.run_dir / "eval.json").is_file():
                return Outcome(job.method, job.seed, "skipped")
            if job.run_dir.exists():
                shutil.rmtree(job.run_dir)  # no checkpoint mid-run: start over
            module = _text_module(kind)
            (module.run_code if kind == "code" else module.run_lm)(job.config, job.run_dir)
            return Outcome(job.method, job.seed, "done")
        found = checkpoints.latest(job.run_dir)
        if found is not None:
            if found.state.get("complete"):
                return Outcome(job.method, job.seed, "skipped")
            resume(job.run_dir, on_checkpoint=on_checkpoint)
        else:
            if job.run_dir.exists():
                shutil.rmtree(job.run_dir)  # started but never checkpointed: nothing to keep
            config = validate(job.config, f"{job.method} seed {job.seed}")
            run_config(config, out=job.run_dir, on_checkpoint=on_checkpoint)
    except Exception as err:  # one failed run must not stop the sweep
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return Outcome(job.method, job.seed, "failed", f"{type(err).__name__}: {first}")
    return Outcome(job.method, job.seed, "done")


def _run_local(jobs: list[Job], workers: int, on_event: Callable[[str, Job, Outcome | None], None]) -> list[Outcome]:
    outcomes = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending: dict[Future[Outcome], Job] = {}
        queue = list(jobs)
        while queue or pending:
            while queue and len(pending) < workers:
                job = queue.pop(0)
                pending[pool.submit(run_job, job)] = job
                on_event("start", job, None)
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                outcome = future.result()
                outcomes.append(outcome)
                on_event("end", job, outcome)
    return outcomes


def _run_ray(
    jobs: list[Job], storage: str, address: str | None, on_event: Callable[[str, Job, Outcome | None], None]
) -> list[Outcome]:
    try:
        from heron.experiments.tune import run_sweep
    except ImportError:
        raise ConfigError("--backend ray needs `pip install heron-rl[ray]`") from None
    return run_sweep(jobs, storage, address, on_event)


@dataclass
class CompareResult:
    """What a sweep produced: the per-method summary table, each job's outcome, and the files."""

    table: list[dict[str, object]]
    outcomes: list[Outcome]
    out: Path


def compare(
    config: str | Path,
    methods: Sequence[str],
    seeds: int | Sequence[int],
    out: str | Path,
    *,
    backend: str = "local",
    address: str | None = None,
    storage: str | None = None,
    workers: int | None = None,
    threshold: float | None = None,
    progress: bool = True,
) -> CompareResult:
    """Run every (method, seed) of a config and write the summary table and plots into ``out``.

    :param config: a YAML run config, optionally with ``variants`` and ``threshold``.
    :param methods: method names (see :func:`resolve_method`).
    :param seeds: a number of seeds (0..N-1) or explicit seeds.
    :param out: the sweep directory; runs already complete there are skipped, interrupted ones resumed.
    :param backend: ``local`` (a process pool) or ``ray`` (Ray Tune trials on a Ray cluster; local
        when no address).
    :param storage: ``ray`` only: where trials' checkpoints and metrics go and a sweep resumes
        from, a local path or a URI pyarrow opens (default ``out/ray``; see ``docs/ray.md``).
    :param workers: local processes (default: the machine's cores).
    :param threshold: return for ``steps_to_threshold`` (default: the config's, if any).
    """
    base, variants, config_threshold, pareto = load_sweep(config)
    front = settings(pareto)  # checked before any run starts
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ConfigError("--seeds must be at least 1")
    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend must be local or ray, got {backend!r}")
    if storage is not None and backend != "ray":
        raise ConfigError("--storage is for --backend ray")
    out = Path(out)
    jobs = plan(base, methods, seed_list, variants, out)
    out.mkdir(parents=True, exist_ok=True)
    threshold = config_threshold if threshold is None else threshold
    with _Status(len(jobs), progress) as status:
        if backend == "ray":
            outcomes = _run_ray(jobs, storage or str(out / "ray"), address, status.event)
        else:
            outcomes = _run_local(jobs, workers or os.cpu_count() or 1, status.event)
    curves = {m: [report.read_metrics(j.run_dir / "metrics.csv") for j in jobs if j.method == m] for m in methods}
    curves = {m: [rows for rows in runs if rows] for m, runs in curves.items()}
    kind = config_kind(base)
    if kind == "control":
        title = f"{base['env']} / {base.get('algorithm', 'ppo')} / {base.get('total_timesteps')} steps"
    else:
        model, trainer = base.get("model", "tiny"), base.get("trainer", "grpo")
        title = f"{kind}: {model} / {trainer} / {base.get('steps')} steps"
    table = summarize(curves, threshold)
    write_summary(table, out, title, threshold)
    report.plot_learning_curves(curves, out / "learning_curves.png", title)
    report.plot_diagnostics(curves, out / "diagnostics.png", title)
    first = next((runs[0][0] for runs in curves.values() if runs), {})
    factors = [k.removeprefix("factor/") for k in first if k.startswith("factor/")]
    if factors:
        report.plot_factor_curves(curves, factors, out / "factor_curves.png", title)
    (out / "outcomes.json").write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    if kind == "control":
        report_sweep(jobs, curves, table, out, title, threshold, front)
    return CompareResult(table, outcomes, out)


class _Status:
    """Overall progress: runs done, running, failed (a rich progress bar, or nothing)."""

    def __init__(self, total: int, show: bool) -> None:
        self.total, self.show = total, show
        self.running = self.done = self.failed = 0

    def __enter__(self) -> _Status:
        if self.show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("[bold]runs"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
            )
            self.task = self.bar.add_task(self._text(), total=self.total)
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.show:
            self.bar.stop()

    def _text(self) -> str:
        return f"running {self.running}, failed {self.failed}"

    def event(self, kind: str, job: Job, outcome: Outcome | None) -> None:
        if kind == "start":
            self.running += 1
        else:
            self.running -= 1
            self.done += 1
            if outcome is not None and outcome.status == "failed":
                self.failed += 1
                if self.show:
                    self.bar.console.print(f"[red]failed[/] {job.method} seed {job.seed}: {outcome.message}")
        if self.show:
            self.bar.update(self.task, completed=self.done, description=self._text())
