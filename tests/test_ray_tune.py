"""`heron compare --backend ray`: trials on Ray Tune, checkpoints in storage, a killed driver, a lost node.

The cluster has two nodes, each with its own temp folder (where trials keep their scratch run
directories): a head node that runs no trials (like a cluster's head) and a two-core worker. The
storage location is a third folder, reached only through Tune and pyarrow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import ray
import yaml
from ray._private import ray_constants
from ray.cluster_utils import Cluster
from typer.testing import CliRunner

from heron import checkpoints
from heron.cli import app
from heron.experiments.runner import CompareResult, compare
from heron.experiments.tune import EXPERIMENT, PLAN

SWEEP = {
    "env": "heron/Pendulum-v1",
    "total_timesteps": 512,
    "algorithm_kwargs": {"n_steps": 256, "batch_size": 64},
    "eval": {"every": 256, "episodes": 1},
    "variants": {"long": {"method": "ground-truth", "total_timesteps": 3072}},
}
LOOPBACK = "127.0.0.1"
runner = CliRunner()


class TwoNodes:
    """A local Ray cluster on the loopback address: a head without cores for trials and a two-core
    worker node, each with its own temp folder; the driver (this process) is connected to it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "node_ip_address": LOOPBACK,
                "temp_dir": str(root / "node0"),
                "include_dashboard": False,
            },
        )
        self.add_worker()
        ray.init(address=self.cluster.address, _node_ip_address=LOOPBACK, log_to_driver=False)

    def add_worker(self) -> None:
        self.worker_dir = self.root / f"node{len(list(self.root.glob('node*')))}"
        self.worker = self.cluster.add_node(num_cpus=2, node_ip_address=LOOPBACK, temp_dir=str(self.worker_dir))

    def replace_worker(self) -> None:
        """Remove the worker node with everything running on it; a fresh node takes its place."""
        self.cluster.remove_node(self.worker)
        self.add_worker()

    def ran_here(self, trial: str) -> bool:
        """Whether Tune gave the trial a working folder on the current worker node."""
        return any(self.worker_dir.glob(f"session_*/artifacts/*/{EXPERIMENT}/working_dirs/{trial}"))


@pytest.fixture(scope="module")
def nodes() -> Iterator[TwoNodes]:
    root = Path(tempfile.mkdtemp(prefix="heron-ray-", dir="/tmp"))  # Ray's socket paths must stay short
    (root / "ray").mkdir()  # RAY_TMPDIR/ray: where Ray notes the cluster's address
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", str(root))
        # Ray turns 127.0.0.1 into the machine's address unless told it runs on one machine: the
        # nodes (started with this environment), the drivers and this process all stay on loopback.
        patch.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
        patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        two = TwoNodes(root)
        try:
            yield two
        finally:
            ray.shutdown()
            two.cluster.shutdown()
            shutil.rmtree(root, ignore_errors=True)


def write_sweep(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    return path


def stored(storage: Path, trial: str) -> list[Path]:
    """The trial's checkpoints in storage (Tune keeps the latest)."""
    return sorted((storage / EXPERIMENT / trial).glob("checkpoint_*"))


def latest_index(storage: Path, trial: str) -> int:
    """The number of the trial's latest checkpoint in storage (-1: none yet)."""
    return max((int(re.sub(r"\D", "", p.name)) for p in stored(storage, trial)), default=-1)


def reported(storage: Path, trial: str) -> list[dict[str, object]]:
    """The results Tune recorded for a trial, in order."""
    lines = (storage / EXPERIMENT / trial / "result.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def wait_for(condition: Callable[[], bool], seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_sweep_survives_a_killed_driver_and_a_lost_node(nodes: TwoNodes, tmp_path: Path) -> None:
    """A sweep of a short and a long trial. Its driver is killed once the short one is complete; a new
    driver, with an empty out directory, restores the sweep from storage: the short trial is kept, the
    long one resumed. Then the worker node running it is lost, and the trial continues on a new node
    from its last checkpoint in storage. The summary and run files come from storage."""
    storage = tmp_path / "storage"
    config = write_sweep(tmp_path)
    short, long = "ground-truth-seed0", "long-seed0"

    command = [sys.executable, "-m", "heron", "compare", str(config), "--methods", "ground-truth,long"]
    command += ["--seeds", "1", "--out", str(tmp_path / "first"), "--backend", "ray"]
    command += ["--address", nodes.cluster.address, "--storage", f"file://{storage}", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    driver = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for(lambda: any((p / "policy.zip").exists() for p in stored(storage, short)) or driver.poll() is not None)
        seen = latest_index(storage, long)
        wait_for(lambda: latest_index(storage, long) > seen or driver.poll() is not None)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert driver.returncode == -signal.SIGKILL, "the first driver ended by itself"
    complete = stored(storage, short)
    assert complete and checkpoints.latest(complete[-1])
    assert "outcome" not in reported(storage, long)[-1]

    out = tmp_path / "second"
    results: list[CompareResult] = []
    sweep = threading.Thread(
        target=lambda: results.append(
            compare(config, ["ground-truth", "long"], 1, out, backend="ray", storage=str(storage), progress=False)
        ),
        daemon=True,
    )
    sweep.start()  # Ray adds and removes nodes from the main thread only
    seen = latest_index(storage, long)
    wait_for(lambda: latest_index(storage, long) > seen or not sweep.is_alive())
    assert sweep.is_alive(), "the long trial ended before its node was lost"
    nodes.replace_worker()
    sweep.join(timeout=240)
    assert results, "the restored sweep did not finish"

    assert {o.method: o.status for o in results[0].outcomes} == {"ground-truth": "skipped", "long": "done"}
    assert stored(storage, short) == complete  # the complete trial was not run again
    assert nodes.ran_here(long)  # on the new node
    final = reported(storage, long)[-1]
    assert final["outcome"] == "done" and final["step"] == 3072
    assert final["iterations_since_restore"] < final["training_iteration"]  # resumed, not started over
    for method, steps in (("ground-truth", 512), ("long", 3072)):
        run = out / "runs" / method / "seed0"  # downloaded from storage
        assert checkpoints.latest(run).state["complete"]
        rows = [int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
        assert rows == sorted(set(rows)) and rows[-1] == steps
        assert (run / "policy.zip").exists()
    summary = {line.split(",")[0] for line in (out / "summary.csv").read_text().splitlines()[1:]}
    assert summary == {"ground-truth", "long"}
    assert not list(storage.rglob("heron-*-seed0"))  # scratch stays on the nodes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "ray", "--storage", "nosuch://bucket/sweep"], "--storage: 'nosuch://bucket/sweep'"),
        (["--storage", "/tmp/x"], "--storage is for --backend ray"),
    ],
)
def test_bad_storage_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    config = write_sweep(tmp_path)
    result = runner.invoke(app, ["compare", str(config), "--methods", "ground-truth", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_storage_of_another_sweep_is_refused(tmp_path: Path) -> None:
    """Restoring would run the stored sweep instead: a storage location holding another one is refused."""
    storage = tmp_path / "storage"
    (storage / EXPERIMENT).mkdir(parents=True)
    (storage / EXPERIMENT / PLAN).write_text("[]")
    args = ["compare", str(write_sweep(tmp_path)), "--methods", "ground-truth", "--backend", "ray"]
    result = runner.invoke(app, [*args, "--storage", str(storage), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "holds another sweep" in result.stderr
