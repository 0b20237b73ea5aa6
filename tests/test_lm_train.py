"""heron lm train: trl's RewardTrainer and DPOTrainer on pairs labeled from ratings, tiny models on CPU."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from heron import ConfigError, Hierarchy
from heron.lm.cli import lm_app
from heron.lm.train import HELPSTEER2_WEIGHTS, label_pairs, label_sources, split_by_prompt, validate

DATA = Path(__file__).parent / "data" / "helpsteer-synthetic.jsonl"
runner = CliRunner()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads: the tiny model is built from a config


def _subset(tmp_path: Path, prompts: int) -> Path:
    """The committed rating set's first ``prompts`` prompts (4 responses each), for runs that only need to work."""
    lines = DATA.read_text().splitlines()[: 4 * prompts]
    path = tmp_path / "ratings.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tmp_path: Path, ratings: Path = DATA, **overrides: object) -> dict[str, object]:
    settings = {"ratings": str(ratings), "out": str(tmp_path / "run"), "max_length": 256, "batch_size": 8}
    return {**settings, "max_steps": 2, **overrides}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"methd": "heron"}, "config: methd: unknown setting"),
        ({"method": "ranking"}, "config: method: Input should be 'heron', 'weighted-sum', 'helpfulness'"),
        ({"trainer": "ppo"}, "config: trainer: Input should be 'reward' or 'dpo'"),
        ({"trainer": "dpo", "margin": True}, "margin: only the reward trainer reads a margin"),
        ({"hierarchy": "correctness>:min"}, "config: hierarchy: hierarchy 'correctness>:min': empty factor name"),
        ({"tiny": {"width": 30, "heads": 4}}, "config: tiny: width 30 is not a multiple of heads 4"),
        ({"eval_fraction": 1.0}, "config: eval_fraction: Input should be less than 1"),
        ({"model": "nowhere"}, "config: model: 'nowhere' is neither 'tiny' nor a local model directory"),
    ],
)
def test_bad_settings_are_one_line_config_errors(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(_config(tmp_path, **overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ratings: r.jsonl\nmethod: ranking\n", "method: Input should be"),
        ("ratings: r.jsonl\nlr: 0.1\nlr: 0.2\n", "found the key 'lr' twice"),
        ("method: heron\n", "ratings: required setting is missing"),
        ("ratings: missing.jsonl\n", "missing.jsonl: no such file"),
    ],
)
def test_cli_bad_config_is_one_line_with_exit_code_2(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "lm.yaml"
    config.write_text(text)
    result = runner.invoke(lm_app, ["train", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


def test_importing_heron_lm_loads_neither_transformers_nor_trl() -> None:
    code = (
        "import sys, heron, heron.lm, heron.lm.train, heron.lm.cli, heron.cli; "
        "print([m for m in ('transformers', 'trl', 'datasets') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_method_labels_with_its_own_teacher() -> None:
    table = json.loads("[" + ",".join(DATA.read_text().splitlines()) + "]")
    columns = {key: [row[key] for row in table] for key in table[0]}
    config = validate({"ratings": str(DATA)})
    sources = label_sources(config)
    assert list(sources)[:3] == ["heron", "weighted-sum", "flat-preference"]
    assert {"helpfulness", "correctness", "coherence", "complexity", "verbosity:min"} <= set(sources)
    assert config.weights == HELPSTEER2_WEIGHTS
    weighted = label_pairs(columns, sources["weighted-sum"], "weighted-sum", config)
    z = np.array([[row[k] for k in HELPSTEER2_WEIGHTS] for row in table], dtype=float)
    score = z @ np.array(list(HELPSTEER2_WEIGHTS.values()))
    assert len(weighted) and np.all(score[weighted.chosen] > score[weighted.rejected])
    flat = label_pairs(columns, sources["flat-preference"], "flat-preference", config)
    unweighted = z[:, :3].sum(axis=1)  # helpfulness, correctness, coherence: the hierarchy's attributes
    assert len(flat) and np.all(unweighted[flat.chosen] > unweighted[flat.rejected])
    three = ["prompt", "response", "helpfulness", "correctness", "coherence"]  # a table without the other two
    assert set(label_sources(config, three)) == {"heron", "flat-preference", "helpfulness", "correctness", "coherence"}
    assert "weighted-sum" in label_sources(validate({"ratings": str(DATA), "method": "weighted-sum"}), three)
    train, held = split_by_prompt(columns, "prompt", 0.2, seed=0)
    assert len(set(held["prompt"])) == 12 and not set(held["prompt"]) & set(train["prompt"])


def test_helpfulness_method_maximizes_helpfulness_even_when_ranked_as_a_cost() -> None:
    config = validate({"ratings": str(DATA), "hierarchy": "helpfulness:min>correctness", "method": "helpfulness"})
    sources = label_sources(config, list(HELPSTEER2_WEIGHTS))
    assert sources["helpfulness"][0] == Hierarchy(["helpfulness"]) and "helpfulness:min" in sources


@pytest.mark.parametrize(
    ("method", "margin"), [("heron", True), ("weighted-sum", False), ("helpfulness", False), ("flat-preference", True)]
)
def test_reward_model_trains_with_each_method_and_writes_metrics(tmp_path: Path, method: str, margin: bool) -> None:
    pytest.importorskip("trl")
    from heron.lm.train import train_lm

    result = train_lm(_config(tmp_path, _subset(tmp_path, 20), method=method, margin=margin, max_steps=1))
    metrics = json.loads((result.out / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["steps"] == 1
    with (result.out / "accuracy.csv").open() as f:
        rows = list(csv.DictReader(f))
    trained_on = [row["labels"] for row in rows if row["trained_on"] == "True"]
    assert trained_on == [method]
    assert {"heron", "weighted-sum", "flat-preference", "helpfulness", "verbosity:min"} <= {r["labels"] for r in rows}
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows if int(r["pairs"]))
    assert metrics["train_pairs_kept"] > 0
    assert (result.out / "model" / "config.json").exists() and (result.out / "model" / "tokenizer.json").exists()
    assert not list(result.out.glob("**/*.bin")) and not (result.out / "trainer").exists()  # no pickles


def test_reward_model_learns_its_labels(tmp_path: Path) -> None:
    """After 30 steps the model orders its training pairs well (measured 0.74 at seeds 0 and 1) and its loss fell.

    Held-out accuracy is not asserted: the committed set holds 12 held-out prompts (68 pairs), where
    runs of 30-100 steps measured 0.51-0.59, too close to chance for a reliable test.
    """
    pytest.importorskip("trl")
    from heron.lm.train import train_lm

    result = train_lm(_config(tmp_path, method="heron", max_steps=30, batch_size=16, lr=3e-3))
    metrics = result.metrics
    assert metrics["train_accuracy"] > 0.65, metrics
    assert metrics["loss_last"] < metrics["loss_first"], metrics


def test_dpo_trains_against_an_explicit_reference_model(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from heron.lm.train import train_lm

    result = train_lm(_config(tmp_path, _subset(tmp_path, 20), trainer="dpo", max_steps=2, lr=1e-2))
    assert result.metrics["trainer"] == "dpo" and result.metrics["steps"] == 2
    # the reference is the policy before training, so an implicit reward is 0 until the policy moves
    assert np.all(np.isfinite(result.scores)) and np.any(result.scores != 0)
    assert (result.out / "metrics.json").exists()


def test_cli_trains_and_prints_the_accuracy_table(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    config = tmp_path / "lm.yaml"
    config.write_text(f"ratings: {_subset(tmp_path, 12)}\nmax_steps: 1\nbatch_size: 4\nmax_length: 256\n")
    out = tmp_path / "run"
    result = runner.invoke(
        lm_app, ["train", str(config), "--method", "helpfulness", "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "helpfulness" in result.output and "<- trained on" in result.output
    assert json.loads((out / "metrics.json").read_text())["method"] == "helpfulness"
