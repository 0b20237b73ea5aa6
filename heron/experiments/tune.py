"""``heron compare --backend ray``: a sweep's jobs as Ray Tune trials against a storage location.

Each (method, seed) is one trial. Its run directory is scratch on whichever node runs it; after each
checkpoint set that follows an evaluation, the trial reports the new evaluation rows to Tune
(``tune.report``) with that set (``config.yaml``, ``metrics.csv``, ``checkpoints/``) as a Tune
checkpoint, which Tune copies to the storage location; when the run ends, the whole run directory
is the trial's last checkpoint. A trial lost with its node is restarted on another one: it
downloads its last checkpoint into fresh scratch and :func:`heron.experiments.runner.run_job`
resumes it. A sweep whose driver died is restored from storage (finished trials are kept, the
others resumed), and the summary's run files are downloaded from storage, so nothing needs a
filesystem shared between nodes. See ``docs/ray.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.fs
import ray
from ray import tune

from heron import checkpoints
from heron.errors import ConfigError
from heron.experiments.runner import Job, Outcome, run_job

EXPERIMENT = "heron-compare"  # the sweep's folder under the storage location
PLAN = "heron-sweep.json"  # the jobs of the sweep stored there (another sweep is refused)
MAX_FAILURES = 3  # restarts of a trial from its last checkpoint after its worker or node was lost
KEEP = 1  # checkpoints kept per trial in storage (each holds the whole state to resume from)
INTERRUPTED = "interrupted: run the sweep again to resume it from storage"
Event = Callable[[str, Job, Outcome | None], None]


def storage_location(storage: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem and path of ``--storage``: a local path, or a URI pyarrow's filesystems open
    (``file://``, ``s3://``, ``gs://``, ``hdfs://``)."""
    uri = storage if "://" in storage else str(Path(storage).expanduser().resolve())
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowException, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--storage: {storage!r} is not a path or URI pyarrow can open ({reason})") from None
    return fs, path.rstrip("/")


def run_sweep(jobs: list[Job], storage: str, address: str | None, on_event: Event) -> list[Outcome]:
    """Run every job as a Tune trial whose checkpoints go to ``storage``; restore the sweep from
    there when it was started before. Each job's final run files are then downloaded from storage
    into its ``run_dir``.

    :param address: a Ray cluster to connect to (None: start Ray here with the machine's cores).
    :param on_event: ``("start" | "end", job, outcome)`` as trials start and end.
    """
    fs, root = storage_location(storage)
    experiment = f"{root}/{EXPERIMENT}"
    _check_plan(fs, experiment, jobs, storage)
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            cores = os.cpu_count()
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    # With one checkpoint kept, Tune snapshots the sweep's state in storage after each one, so that a
    # restored sweep finds the checkpoint its state names; that is on purpose, not a bottleneck to warn of.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    try:
        by_key = {(job.method, job.seed): job for job in jobs}
        ended: dict[tuple[str, int], Outcome] = {}  # trials a restored sweep does not run again
        if tune.Tuner.can_restore(experiment, storage_filesystem=fs):
            tuner = tune.Tuner.restore(experiment, _trainable, resume_errored=True, storage_filesystem=fs)
            for result in _each(tuner.get_results()):
                if result.error is None and "outcome" in (result.metrics or {}):
                    outcome = _outcome(result)
                    kept = outcome if outcome.status == "failed" else replace(outcome, status="skipped")
                    ended[outcome.method, outcome.seed] = kept
        else:
            tuner = tune.Tuner(
                _trainable,
                param_space={"job": tune.grid_search([_spec(job) for job in jobs])},
                tune_config=tune.TuneConfig(trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
                run_config=tune.RunConfig(
                    name=EXPERIMENT,
                    storage_path=root,
                    storage_filesystem=fs,
                    failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP),
                    sync_config=tune.SyncConfig(sync_artifacts=False),
                    callbacks=[_Progress()],
                    verbose=0,
                ),
            )
        for key, outcome in ended.items():
            on_event("start", by_key[key], None)
            on_event("end", by_key[key], outcome)
        with _listening(by_key, on_event):
            results = tuner.fit()
        outcomes = []
        for result in _each(results):
            job = by_key[_key(result.config)]
            if result.checkpoint is not None:
                _download(result.checkpoint, job.run_dir)
            elif job.run_dir.exists():
                shutil.rmtree(job.run_dir)  # the local copy mirrors storage, which holds nothing of this run
            outcomes.append(ended.get((job.method, job.seed)) or _outcome(result))
        return outcomes
    finally:
        if started_here:
            ray.shutdown()


def _spec(job: Job) -> dict[str, Any]:
    return {"method": job.method, "seed": job.seed, "config": job.config}


def _key(config: dict[str, Any] | None) -> tuple[str, int]:
    assert config is not None  # every trial has its job
    return config["job"]["method"], config["job"]["seed"]


def _each(grid: tune.ResultGrid) -> list[tune.Result]:
    return [grid[i] for i in range(len(grid))]


def _trial_name(trial: Any) -> str:
    method, seed = _key(trial.config)
    return f"{method}-seed{seed}"


def _check_plan(fs: pyarrow.fs.FileSystem, experiment: str, jobs: list[Job], storage: str) -> None:
    """Record the sweep's jobs at the storage location, or refuse a location that holds another sweep."""
    plan = json.dumps([_spec(job) for job in jobs], sort_keys=True)
    path = f"{experiment}/{PLAN}"
    try:
        info = fs.get_file_info(path)
        if info.type == pyarrow.fs.FileType.File:
            with fs.open_input_stream(path) as f:
                if f.read().decode() != plan:
                    raise ConfigError(
                        f"--storage: {storage} holds another sweep (other methods, seeds or config): "
                        "choose another --storage"
                    )
            return
        fs.create_dir(experiment)
        with fs.open_output_stream(path) as f:
            f.write(plan.encode())
    except (pyarrow.ArrowException, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--storage: cannot use {storage} ({reason})") from None


def _download(checkpoint: tune.Checkpoint, run_dir: Path) -> None:
    """The trial's last checkpoint from storage as the job's run directory (replacing what was there)."""
    partial = run_dir.with_name(f".{run_dir.name}.download")
    shutil.rmtree(partial, ignore_errors=True)
    checkpoint.to_directory(str(partial))
    if run_dir.exists():
        shutil.rmtree(run_dir)
    partial.rename(run_dir)


def _outcome(result: tune.Result) -> Outcome:
    """How a trial ended: its final report's outcome, Tune's error, or not at all (interrupted)."""
    method, seed = _key(result.config)
    metrics = result.metrics or {}
    if result.error is not None:
        return Outcome(method, seed, "failed", _error_line(result.error))
    if "outcome" not in metrics:
        return Outcome(method, seed, "failed", INTERRUPTED)
    return Outcome(method, seed, str(metrics["outcome"]), str(metrics.get("message", "")))


# -- the trial ------------------------------------------------------------------------------------
def _trainable(params: dict[str, Any]) -> None:
    """One job as a Tune trial: train (or resume from the trial's last checkpoint) in scratch on
    this node: Tune's working directory for the trial, in Ray's session folder of the node.

    A run that fails ends the trial with its outcome: runs are deterministic from their checkpoint,
    so Tune's restarts are kept for what a run cannot report itself, a lost worker or node.
    """
    spec = params["job"]
    scratch = Path.cwd() / f"heron-{tune.get_context().get_trial_name()}"
    shutil.rmtree(scratch, ignore_errors=True)  # what an earlier attempt on this node left
    run_dir = scratch / "run"
    try:
        restored = tune.get_checkpoint()
        if restored is not None:
            restored.to_directory(str(run_dir))
        reporter = _Reporter(run_dir, scratch / "upload")
        job = Job(spec["method"], spec["seed"], spec["config"], run_dir)
        reporter.finish(run_job(job, on_checkpoint=reporter))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the run is in storage now


def _rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluation rows a checkpoint set holds (None in JSON is NaN)."""
    columns, rows = state["evaluation"]["columns"], state["evaluation"]["metrics"]
    return [{c: math.nan if v is None else v for c, v in zip(columns, row, strict=True)} for row in rows]


class _Reporter:
    """Reports a run's evaluation rows to Tune, each once, with the checkpoint set written after them.

    :param run_dir: the run directory in the trial's scratch.
    :param upload: where a set is staged for Tune to copy to storage.
    """

    def __init__(self, run_dir: Path, upload: Path) -> None:
        self.run_dir, self.upload = run_dir, upload
        restored = checkpoints.latest(run_dir)
        rows = _rows(restored.state) if restored is not None else []
        self.reported = rows[-1]["step"] if rows else -1  # a restored set's rows were reported with it

    def _pending(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        return [row for row in _rows(state) if row["step"] > self.reported]

    def __call__(self, written: Path) -> None:
        """After a checkpoint set is written: its new rows, the last one with the set."""
        state = json.loads((written / checkpoints.STATE).read_text())
        pending = self._pending(state)
        if state["complete"] or not pending:
            return  # the final report carries the whole run directory; no new row, nothing to say
        shutil.rmtree(self.upload, ignore_errors=True)
        sets = self.upload / "checkpoints"
        sets.mkdir(parents=True)
        for name in ("config.yaml", "metrics.csv"):
            shutil.copy2(self.run_dir / name, self.upload / name)
        shutil.copy2(written.parent / checkpoints.LATEST, sets / checkpoints.LATEST)
        shutil.copytree(written, sets / written.name, copy_function=_link_or_copy)
        for row in pending[:-1]:
            tune.report(row)
        tune.report(pending[-1], checkpoint=tune.Checkpoint.from_directory(str(self.upload)))
        self.reported = pending[-1]["step"]
        shutil.rmtree(self.upload)

    def finish(self, outcome: Outcome) -> None:
        """The run ended: the rows not reported yet, the last one with the outcome (``outcome`` and
        ``message``) and, when the run changed and has a checkpoint, the whole run directory."""
        final = checkpoints.latest(self.run_dir)
        rows = [] if final is None else self._pending(final.state) or _rows(final.state)[-1:]
        for row in rows[:-1]:
            tune.report(row)
        changed = final is not None and outcome.status != "skipped"
        tune.report(
            {**(rows[-1] if rows else {}), "outcome": outcome.status, "message": outcome.message},
            checkpoint=tune.Checkpoint.from_directory(str(self.run_dir)) if changed else None,
        )


def _link_or_copy(source: str, target: str) -> None:
    """A checkpoint set's files never change once written: stage them as hard links where possible."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# -- progress on the driver ---------------------------------------------------------------------------
_listener: Callable[[str, Any, BaseException | None], None] | None = None


@contextmanager
def _listening(jobs: dict[tuple[str, int], Job], on_event: Event) -> Iterator[None]:
    """Route Tune's trial events to ``on_event`` while the sweep runs (Tune pickles its callbacks
    with the experiment, so :class:`_Progress` holds no state and finds the listener here)."""
    global _listener
    started: set[tuple[str, int]] = set()

    def listen(kind: str, trial: Any, error: BaseException | None) -> None:
        key = _key(trial.config)
        if kind == "start":
            if key not in started:  # a restarted trial starts again; count it once
                started.add(key)
                on_event("start", jobs[key], None)
        elif error is not None:
            on_event("end", jobs[key], Outcome(*key, "failed", _error_line(error)))
        else:
            result = trial.last_result
            on_event("end", jobs[key], Outcome(*key, result.get("outcome", "done"), result.get("message", "")))

    _listener = listen
    try:
        yield
    finally:
        _listener = None


class _Progress(tune.Callback):
    """Tune's trial starts, completions and errors, handed to the running sweep's listener."""

    def _tell(self, kind: str, trial: Any, error: BaseException | None = None) -> None:
        if _listener is not None:
            _listener(kind, trial, error)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._tell("start", trial)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._tell("end", trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._tell("end", trial, trial.get_pickled_error() or RuntimeError("the trial failed"))


def _error_line(error: BaseException) -> str:
    """The first line of what went wrong (a run's own error, not Ray's wrapper around it)."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__
