"""heron lm train with trainer grpo / rloo: a policy trained online on each method's reward, tiny models on CPU."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from heron import ConfigError
from heron.experiments.summary import run_stats
from heron.lm.cli import lm_app
from heron.lm.online import (
    FACTORS,
    ProgramScorer,
    build_policy_tokenizer,
    build_reward,
    run_lm,
    train_online,
    validate_online,
)
from heron.lm.ratings import ATTRIBUTES, generate_ratings, score_response
from heron.lm.train import HELPSTEER2_WEIGHTS
from heron.report import read_metrics

DATA = Path(__file__).parent / "data" / "helpsteer-synthetic.jsonl"
runner = CliRunner()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads: the tiny model is built from a config


def _subset(tmp_path: Path, prompts: int = 24) -> Path:
    """The committed rating set's first ``prompts`` prompts (4 responses each)."""
    lines = DATA.read_text().splitlines()[: 4 * prompts]
    path = tmp_path / "ratings.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tmp_path: Path, **overrides: object) -> dict[str, object]:
    """A run that only needs to work: a 1-layer GPT-2, half an epoch of warm start, 2 steps."""
    settings = {
        "ratings": str(_subset(tmp_path)),
        "out": str(tmp_path / "run"),
        "trainer": "grpo",
        "tiny": {"layers": 1, "width": 16, "heads": 2},
        "warm_start": {"epochs": 0.5, "batch_size": 16},
        "steps": 2,
        "prompts_per_step": 2,
        "num_generations": 3,
        "max_completion_length": 12,
        "eval_prompts": 3,
        "max_length": 160,
    }
    return {**settings, **overrides}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"methd": "heron"}, "config: methd: unknown setting"),
        ({"trainer": "ppo"}, "config: trainer: Input should be 'grpo' or 'rloo'"),
        ({"hierarchy": "correctness>speed"}, "config: hierarchy: 'speed' is not a scored factor (helpfulness"),
        ({"weights": {"brevity": 1.0}}, "config: weights: 'brevity' is not a scored factor"),
        ({"num_generations": 1}, "config: num_generations: Input should be greater than or equal to 2"),
        ({"model": "nowhere"}, "config: model: 'nowhere' is neither tiny, smollm2, a .gguf file nor a local model"),
        ({"lora": {"rank": 4}}, "config: lora.rank: unknown setting"),
        ({"features": "bert"}, "config: features: Input should be 'none' or 'minilm'"),
    ],
)
def test_bad_settings_are_one_line_config_errors(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_online(_config(tmp_path, **overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_defaults_follow_the_model(tmp_path: Path) -> None:
    tiny = validate_online(_config(tmp_path, warm_start=None))
    assert tiny.warm_start is not None and tiny.warm_start.epochs == 3 and tiny.lora is None
    pretrained = validate_online({**_config(tmp_path, warm_start=None), "model": str(tmp_path)})
    assert pretrained.warm_start is not None and pretrained.warm_start.epochs == 0
    assert pretrained.lora is not None and pretrained.lora.r == 8


def test_cli_bad_config_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, steps=0)))
    result = runner.invoke(lm_app, ["train", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {path}: steps: Input should be greater than or equal to 1"]


def test_a_prompt_the_program_cannot_score_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    rows = [{"prompt": f"Write a poem about {w}.", "response": "Roses.", "helpfulness": 2} for w in ("sea", "sky")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"other\.jsonl: prompt is none of the generated task templates"):
        train_online({**_config(tmp_path), "ratings": str(path)})


def test_policy_tokenizer_decodes_back_to_the_text() -> None:
    rows = generate_ratings(10, seed=3)
    texts = [r["prompt"] for r in rows] + [r["response"] for r in rows]
    tokenizer = build_policy_tokenizer(texts)
    for text in texts[-8:]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == " ".join(text.split(" "))


def test_fixed_rewards_are_the_program_scores(tmp_path: Path) -> None:
    rows = generate_ratings(2, responses=3, seed=5)
    prompts, completions = [r["prompt"] for r in rows], [r["response"] for r in rows]
    ratings = [score_response(p, c).ratings for p, c in zip(prompts, completions, strict=True)]
    config = _config(tmp_path, num_generations=3)
    weighted = build_reward(validate_online({**config, "method": "weighted-sum"}), ProgramScorer())
    expected = [sum(w * r[n] for n, w in HELPSTEER2_WEIGHTS.items()) for r in ratings]
    np.testing.assert_allclose(weighted(prompts, completions), expected, rtol=1e-6)  # float32 weights
    helpful = build_reward(validate_online({**config, "method": "helpfulness"}), ProgramScorer())
    np.testing.assert_allclose(helpful(prompts, completions), [r["helpfulness"] for r in ratings], rtol=1e-12)


@pytest.mark.parametrize(
    ("method", "trainer", "factors"),
    [
        ("heron", "grpo", ["correctness", "helpfulness", "length"]),
        ("flat-preference", "grpo", ["correctness", "helpfulness", "length"]),
        ("weighted-sum", "grpo", list(HELPSTEER2_WEIGHTS)),
        ("helpfulness", "grpo", ["helpfulness"]),
        ("heron", "rloo", ["correctness", "helpfulness", "length"]),
    ],
)
def test_every_method_trains_online_on_the_same_path(tmp_path: Path, method: str, trainer: str, factors: list) -> None:
    config = _config(tmp_path, method=method, trainer=trainer, hierarchy="correctness>helpfulness>length:min")
    result = run_lm(config, tmp_path / "job")
    out = tmp_path / "job"
    assert result.out == out
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"metrics.csv", "eval.json", "samples.jsonl", "config.yaml", "model/model.safetensors"} <= written
    assert ("reward_model.safetensors" in written) == (method in ("heron", "flat-preference"))
    assert not [p for p in written if p.endswith((".bin", ".pt", ".pkl", ".pickle"))]  # no pickles

    # the reward is a GroupReward over the method's factors, called once per step
    reward = result.reward
    assert reward.hierarchy.names == factors and len(reward.log) == 2
    assert (reward.loop is not None) == (method in ("heron", "flat-preference"))
    if method == "heron":
        assert "decided/correctness" in reward.log[-1]

    rows = read_metrics(out / "metrics.csv")
    steps = [r for r in rows if r["eval"] == 0]
    evals = [r for r in rows if r["eval"] == 1]
    assert [r["step"] for r in steps] == [1, 2] and [r["step"] for r in evals] == [0, 2]
    assert rows[-1]["eval"] == 1 and rows[0]["eval"] == 1
    assert [r["reward_mean"] for r in steps] == pytest.approx([row["reward_mean"] for row in reward.log])
    for row in rows:
        assert {"step", "return_mean", "wall_clock_s", "length", *(f"factor/{a}" for a in ATTRIBUTES)} <= set(row)
        assert 0 <= row["return_mean"] <= 1 and row["return_mean"] == row["correct"]
    assert evals[-1]["responses"] == 3

    summary = json.loads((out / "eval.json").read_text())
    assert summary["method"] == method and summary["steps"] == 2 and summary["complete"] is True
    assert summary["reward_factors"] == factors and summary["completions"] == 2 * 2 * 3
    for key in ("before", "after"):
        assert {"return_mean", "correct", "complete", "coherent", "length", "factor/verbosity"} <= set(summary[key])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and {"prompt", "response", "correct", "words"} <= set(samples[0])
    stats = run_stats(rows, None)  # heron compare's summary reads the same file
    assert stats["final_return"] == evals[-1]["return_mean"] and "factor/correctness" in stats


def test_lora_adapters_train_and_save_alone(tmp_path: Path) -> None:
    config = _config(tmp_path, steps=1, lora={"r": 2, "alpha": 4, "targets": ["c_attn"]}, warm_start={"epochs": 0})
    result = train_online(config)
    assert type(result.model).__name__.startswith("Peft")
    saved = {p.name for p in (tmp_path / "run" / "model").iterdir()}
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["warm_start"]["steps"] == 0


def test_cli_trains_online(tmp_path: Path) -> None:
    path = tmp_path / "online.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, steps=1)))
    result = runner.invoke(lm_app, ["train", str(path), "--method", "helpfulness", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "grpo on the helpfulness reward (helpfulness): 1 steps" in result.output
    assert "correct" in result.output and "length" in result.output
    with (tmp_path / "run" / "metrics.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3  # before, step 1, after


def test_factors_cover_the_attributes() -> None:
    assert (*ATTRIBUTES, "length") == FACTORS


def test_heron_compare_runs_online_lm_configs(tmp_path: Path) -> None:
    """An online config goes through heron compare: each method a run, the summary per method, the
    ranking swapped by heron-swap."""
    from heron.experiments.runner import compare, load_sweep, resolve_method

    config = tmp_path / "lm.yaml"
    settings = _config(tmp_path)
    settings.pop("out")
    config.write_text(yaml.safe_dump(settings))
    base, variants, *_ = load_sweep(config)
    assert resolve_method(base, "heron-swap", variants)["hierarchy"] == "helpfulness>correctness>coherence"
    result = compare(config, ["heron", "helpfulness"], 1, tmp_path / "sweep", workers=1, progress=False)
    assert [o.status for o in result.outcomes] == ["done", "done"]
    assert [row["method"] for row in result.table] == ["heron", "helpfulness"]
    assert all("length" in row and "factor/correctness" in row for row in result.table)
    assert "helpfulness" in (tmp_path / "sweep" / "summary.md").read_text()
