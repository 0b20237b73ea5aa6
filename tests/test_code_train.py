"""heron code train / eval: trl's GRPO and RLOO on programs run in the sandbox, tiny models on CPU."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from heron import ConfigError
from heron.code import execute_many, pass_at_k, similarity
from heron.code.cli import code_app
from heron.code.evaluate import chat_program, fenced_code, format_prompts, truncate
from heron.code.tasks import human_eval, mbpp_like
from heron.code.train import CODERL_RETURNS, METHODS, code_reward, reference_body, train_code, validate
from heron.models import code_tokenizer

runner = CliRunner()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny model is built from a config: nothing downloads

TINY_RUN = {
    "tasks": {"n": 4, "test_n": 2, "tests_per_problem": 3},
    "tiny": {"layers": 1, "width": 16, "heads": 2, "vocab_size": 300},
    "warm_start": {"steps": 2, "batch_size": 4},
    "num_generations": 2,
    "prompts_per_step": 2,
    "max_completion_length": 12,
    "steps": 2,
    "timeout_s": 2.0,
    "eval": {"samples": 2, "ks": [1, 2], "before": False, "batch_size": 8},
}


# -- Pass@k ------------------------------------------------------------------------------------------


def test_pass_at_k_known_values() -> None:
    n = np.array([10, 10, 10, 10, 5])
    c = np.array([0, 3, 10, 7, 1])
    assert pass_at_k(n, c, 1) == pytest.approx([0.0, 0.3, 1.0, 0.7, 0.2])
    # 1 - C(7, 5) / C(10, 5) = 1 - 21/252; c = 7 leaves 3 wrong samples: any 5 hold a right one
    assert pass_at_k(n, c, 5) == pytest.approx([0.0, 1 - 21 / 252, 1.0, 1.0, 1.0])
    assert pass_at_k([200], [1], 100) == pytest.approx([0.5])  # large n: no overflow
    with pytest.raises(ConfigError, match="k=6 needs"):
        pass_at_k(n, c, 6)
    with pytest.raises(ConfigError, match="between 0 and the samples"):
        pass_at_k([3], [4], 1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_properties(case: tuple[int, int, int]) -> None:
    n, c, k = case
    value = float(pass_at_k([n], [c], k)[0])
    assert 0.0 <= value <= 1.0 + 1e-12
    assert float(pass_at_k([n], [c], 1)[0]) == pytest.approx(c / n)
    if c < n:
        assert float(pass_at_k([n], [c + 1], k)[0]) >= value - 1e-12  # monotone in c
    if k < n:
        assert float(pass_at_k([n], [c], k + 1)[0]) >= value - 1e-12  # monotone in k
    exact = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    assert value == pytest.approx(exact, abs=1e-9)


# -- factors -----------------------------------------------------------------------------------------


def test_truncate_keeps_the_function_body() -> None:
    assert truncate("    return x\n\nprint(f(1))\n") == "    return x\n\n"
    assert truncate("    return x\n") == "    return x\n"
    assert truncate("```python\n    return x") == ""


HEADER = "from typing import List\n\n\ndef total(xs: List[int]) -> int:\n"
PROMPT = HEADER + '    """Sum of xs."""\n'
DEF = "def total(xs: List[int]) -> int:\n    return sum(xs)\n"


@pytest.mark.parametrize(
    ("reply", "program"),
    [
        # a fenced block with a language that repeats the signature: the prompt's imports, then the block
        (f"Here it is:\n```python\n{DEF}```\nIt sums xs.", "from typing import List\n\n\n" + DEF),
        (f"```\n{DEF}```", "from typing import List\n\n\n" + DEF),  # no language
        (f"```py\n{DEF}", "from typing import List\n\n\n" + DEF),  # cut before the closing fence
        (DEF, "from typing import List\n\n\n" + DEF),  # no fence: the whole reply
        ("```python\n    return sum(xs)\n```", PROMPT + "    return sum(xs)\n"),  # only a body: after the prompt
        ("    return sum(xs)\n", PROMPT + "    return sum(xs)\n"),
        ("```python\nx = 1\n```\n```python\ny = 2\n```", PROMPT + "x = 1\n"),  # the first block only
    ],
    ids=["python-fence", "bare-fence", "unclosed", "no-fence", "body-only", "body-no-fence", "first-block"],
)
def test_chat_program_from_the_first_code_block(reply: str, program: str) -> None:
    assert chat_program(reply, PROMPT, "total") == program


def test_chat_programs_run_in_the_sandbox() -> None:
    problem = human_eval()[0]
    solution = problem.solution[problem.solution.index("def ") :]
    replies = [f"Sure!\n```python\n{solution}```\nDone.", f"```python\n{reference_body(problem)}```", "I cannot."]
    programs = [chat_program(r, problem.prompt, problem.entry_point) for r in replies]
    outcomes = execute_many(programs, [problem.tests] * 3, entry_points=[problem.entry_point] * 3)
    assert [o.status for o in outcomes] == ["passed", "passed", "compile_error"]


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="`"), max_size=40), st.sampled_from(["", "python", "py"]))
def test_fenced_code_returns_the_block(code: str, language: str) -> None:
    assert fenced_code(f"prose\n```{language}\n{code}\n```\nmore prose") == code + "\n"
    assert fenced_code(code) == code  # no fence: the reply itself


def test_chat_format_needs_a_chat_template(tmp_path: Path) -> None:
    tokenizer = code_tokenizer(["def f():\n    return 1\n"], vocab_size=300)
    assert format_prompts(tokenizer, ["def f():\n"], "completion") == ["def f():\n"]
    with pytest.raises(ConfigError, match="chat needs a tokenizer with a chat template"):
        format_prompts(tokenizer, ["def f():\n"], "chat")
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    (chat,) = format_prompts(tokenizer, ["def f():\n"], "chat")
    assert chat.startswith("<user>Complete this Python function.") and chat.endswith("def f():\n<assistant>")
    with pytest.raises(ConfigError) as err:  # the tiny model's tokenizer has none: refused before any training
        train_code({**TINY_RUN, "prompt_format": "chat", "warm_start": {"steps": 0}, "out": str(tmp_path / "run")})
    assert "chat template" in str(err.value) and "\n" not in str(err.value)
    result = runner.invoke(
        code_app, ["eval", "tiny", "--task", "mbpp-like", "--problems", "1", "--prompt-format", "chat"]
    )
    assert result.exit_code == 2 and "chat needs a tokenizer with a chat template" in result.output


def test_similarity_is_token_f1() -> None:
    got = similarity(["return x + 5\n", "", "a b", "a a a b", "x"], ["return  x+5", "", "", "a b b", "y"])
    # "a a a b" vs "a b b": unigrams a:3/1, b:1/2 -> 2 shared; bigrams (a a):2/0, (a b):1/1, (b b):0/1 -> 1
    assert got == pytest.approx([1.0, 1.0, 0.0, 2 * 3 / (7 + 5), 0.0])


def test_group_reward_factors_match_the_sandbox(tmp_path: Path) -> None:
    problems = mbpp_like(2, seed=0, tests_per_problem=3)
    body = reference_body(problems[0])
    completions = [body, "    return None\n", "    return (\n", "    raise ValueError\n"]
    completions += [reference_body(problems[1]), "    pass\n", "    1/0\n", "    return 0\n"]
    index = [0] * 4 + [1] * 4
    outcomes = execute_many(
        [problems[i].program(truncate(c)) for i, c in zip(index, completions, strict=True)],
        [problems[i].tests for i in index],
    )
    for method in METHODS:
        config = validate({**TINY_RUN, "method": method, "num_generations": 4, "out": str(tmp_path)})
        reward, scorer = code_reward(config, problems)
        prompts = [problems[i].prompt for i in index]
        rewards = reward(prompts, completions, problem=index)
        matrix = reward.factor_matrix(prompts, completions, {"problem": index})
        for j, name in enumerate(config.hierarchy_names[:4]):
            assert matrix[:, j].tolist() == [o.factors[name] for o in outcomes], (method, name)
        assert matrix[[0, 4], 4].tolist() == [1.0, 1.0]  # the reference body is its own reference
        assert list(scorer(prompts, completions, {"problem": index})["status"]) == [o.status for o in outcomes]
        assert len(rewards) == 8 and all(math.isfinite(r) for r in rewards)
        if method == "coderl":
            assert rewards == [CODERL_RETURNS[o.status] for o in outcomes]
        if method == "ground-truth":
            assert rewards == [o.factors["pass_rate"] for o in outcomes]
        if method == "heron":
            assert "decided/passed" in reward.log[-1] and "rm_accuracy" in reward.log[-1]


# -- the run -----------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:fan_in_fan_out:UserWarning")  # peft on GPT-2's Conv1D layers: handled
@pytest.mark.parametrize(
    ("method", "extra"),
    [(m, {}) for m in METHODS] + [("heron", {"trainer": "rloo"}), ("heron", {"lora": {"r": 4}})],
    ids=[*METHODS, "heron-rloo", "heron-lora"],
)
def test_tiny_run_end_to_end(tmp_path: Path, method: str, extra: dict) -> None:
    out = tmp_path / "run"
    result = train_code({**TINY_RUN, "method": method, **extra, "out": str(out)})
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.csv", "eval.json", "model"}
    assert (out / "model" / "model.safetensors").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))
    assert len(result.metrics) == TINY_RUN["steps"]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("step", "return_mean", "wall_clock_s", "reward_mean", "factor/passed", "status/passed"):
        assert column in header
    for row in result.metrics:
        assert row["factor/passed"] == pytest.approx(row["status/passed"])  # GroupReward's factors = the sandbox's
        assert row["return_mean"] == row["factor/passed"]
    if method in ("heron", "flat-preference"):
        assert "rm_accuracy" in header
    if method == "heron":
        assert "decided/passed" in header
    results = json.loads((out / "eval.json").read_text())
    assert results["problems"] == 2 and results["samples"] == 2
    assert set(results["status"]) == {"compile_error", "runtime_error", "timeout", "failed", "passed"}
    assert sum(results["status"].values()) == 4
    assert 0.0 <= results["pass@1"] <= results["pass@2"] <= 1.0
    assert results["warm_start_steps"] == 2


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"methd": "heron"}, "config: methd: unknown setting"),
        ({"method": "ppo"}, "config: method: Input should be 'heron'"),
        ({"trainer": "ppo"}, "config: trainer: Input should be 'grpo' or 'rloo'"),
        ({"model": "nowhere"}, "config: model: 'nowhere' is neither tiny, smollm2 nor a local"),
        ({"hierarchy": [{"name": "speed"}]}, "config: hierarchy: unknown factor 'speed'"),
        ({"reward_model": {"inputs": ["obs"]}}, "obs is a text embedding of the completion; set features"),
        ({"comparison": {"pairs": 0}}, "comparison.pairs: Input should be greater than or equal to 1"),
        ({"tasks": {"name": "humaneval", "n": 150, "test_n": 20}}, "humaneval holds 164 problems"),
        ({"tiny": {"width": 30, "heads": 4}}, "width 30 is not a multiple of heads 4"),
        ({"num_generations": 1}, "config: num_generations: Input should be greater than or equal to 2"),
        ({"method": "ground-truth", "hierarchy": [{"name": "passed"}]}, "ground-truth rewards pass_rate"),
        ({"weights": {"speed": 1.0}}, "config: weights: unknown factor 'speed'"),
        ({"prompt_format": "chat"}, "warm_start trains on completion prompts"),
        ({"prompt_format": "fim"}, "config: prompt_format: Input should be 'completion' or 'chat'"),
    ],
)
def test_bad_settings_are_one_line_config_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate({**TINY_RUN, **overrides})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("method: ranking\n")
    result = runner.invoke(code_app, ["train", str(path)])
    assert result.exit_code == 2
    assert "error: " in result.output and "method: Input should be" in result.output
    result = runner.invoke(code_app, ["eval", "tiny", "--task", "apps"])
    assert result.exit_code == 2 and "--task: expected humaneval or mbpp-like" in result.output


def test_cli_eval_writes_eval_json(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    args = ["eval", "tiny", "--task", "mbpp-like", "--problems", "2", "--samples", "2", "--k", "1", "--k", "2"]
    result = runner.invoke(code_app, [*args, "--temperature", "1.0", "--max-new-tokens", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["problems"] == 2 and "pass@2" in written and sum(written["status"].values()) == 4
