"""A HelpSteer-schema rating set whose answers a program can check, and the program that checks them.

No multi-attribute rating set installs from the package registries, so this module writes one: rows
with exactly HelpSteer's (and HelpSteer2's) columns ``prompt``, ``response``, ``helpfulness``,
``correctness``, ``coherence``, ``complexity``, ``verbosity`` (integers 0-4). Every prompt is a task
with one checkable answer (arithmetic, a lookup in a small table given in the prompt, sorting a list,
a unit conversion), and several responses per prompt differ in

* correctness: the final answer is right or wrong;
* completeness: the response shows its work (the intermediate value, the looked-up item, the
  smallest and largest item, the conversion factor) or only states the answer;
* coherence: the text is clean, contradicts itself (states two different answers) or stutters
  (a word repeated back to back);
* length: filler sentences that add nothing;
* complexity: plain or elaborate vocabulary.

The ratings are computed from what :func:`score_response` measures on the text (the same program
that scores any new response) plus Gaussian annotator noise, rounded and clipped to 0-4. So a
policy trained on pairs from this set can be scored on its own responses by the same program.

The task spec lives in the prompt text itself: :func:`parse_task` recovers the expected answer from
the prompt alone, so files keep exactly the HelpSteer columns and nothing else is needed to score.

What the checker reads from a response: the value after the last ``answer is`` (a number, or for
sorting the list of numbers), up to the end of that sentence; without such a statement, the last
number in the text (sorting: the numbers of the last sentence holding two or more). Thousands
separators are not understood (write 12345, not 12,345).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heron.errors import ConfigError

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
COLUMNS = ("prompt", "response", *ATTRIBUTES)

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ANSWER = re.compile(r"answer is:?\s*((?:[^.\n]|\.(?=\d))*)", re.IGNORECASE)
_STUTTER = re.compile(r"\b([a-z]+)\s+\1\b", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z]+")
_SENTENCE = re.compile(r"(?:[^.\n]|\.(?=\d))+")

# -- tasks -------------------------------------------------------------------------------------------

_ITEMS: tuple[str, ...] = ("apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "orange", "peach")
_ITEMS += ("pear", "plum", "kiwi", "lime", "papaya", "fig", "date", "apricot", "guava")
# (plural from, singular from, plural to, factor): factors exact in decimal, printed as written here.
_UNITS = (
    ("kilometers", "kilometer", "meters", "1000"),
    ("meters", "meter", "centimeters", "100"),
    ("kilograms", "kilogram", "grams", "1000"),
    ("hours", "hour", "minutes", "60"),
    ("minutes", "minute", "seconds", "60"),
    ("inches", "inch", "centimeters", "2.54"),
    ("feet", "foot", "meters", "0.3048"),
    ("miles", "mile", "kilometers", "1.609344"),
    ("gallons", "gallon", "liters", "3.785"),
)


@dataclass(frozen=True)
class Task:
    """What a prompt asks, as recovered from its text.

    :param kind: ``arithmetic``, ``lookup``, ``sorting`` or ``conversion``.
    :param answer: the expected answer: one number, or the sorted list for ``sorting``.
    :param tolerance: the largest accepted absolute error of a number (half a unit of the last
        requested decimal for conversions, 1e-9 otherwise).
    :param facts: what a complete response states besides its answer: numbers (the intermediate
        value, the smallest and largest item, the conversion factor) or a word (the looked-up item).
    :param work: the facts as the generator writes them into a response (plain and elaborate).
    """

    kind: str
    answer: tuple[float, ...]
    tolerance: float
    facts: tuple[str, ...]
    work: tuple[str, str]


def parse_task(prompt: str) -> Task:
    """The task of a generated prompt, recovered from the prompt text alone.

    :param prompt: a prompt written by :func:`generate_ratings`.
    :raises ConfigError: when the text is none of the generator's task templates.
    """
    if m := re.search(r"What is (\d+) \* (\d+) ([+-]) (\d+)\?", prompt):
        a, b, op, c = int(m[1]), int(m[2]), m[3], int(m[4])
        inner, value = f"{a} * {b}", a * b
        answer = value + c if op == "+" else value - c
    elif m := re.search(r"What is \((\d+) ([+-]) (\d+)\) \* (\d+)\?", prompt):
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        inner, value = f"{a} {op} {b}", a + b if op == "+" else a - b
        answer = value * c
    elif m := re.search(r"What is the price of (\w+)\?", prompt):
        prices = {name: int(v) for name, v in re.findall(r"^- (\w+): (\d+)$", prompt, re.MULTILINE)}
        item = m[1]
        if item not in prices:
            raise ConfigError(f"lookup prompt asks for {item!r}, which its price list does not hold")
        return Task(
            "lookup",
            (float(prices[item]),),
            1e-9,
            (item,),
            (
                f"The list says {item} costs {{answer}}.",
                f"Consulting the enumerated price catalogue, {item} corresponds to {{answer}}.",
            ),
        )
    elif m := re.search(r"Sort these numbers in (ascending|descending) order: ([\d, ]+)\.", prompt):
        numbers = [int(v) for v in _NUMBER.findall(m[2])]
        ordered = sorted(numbers, reverse=m[1] == "descending")
        low, high = min(numbers), max(numbers)
        return Task(
            "sorting",
            tuple(float(v) for v in ordered),
            1e-9,
            (str(low), str(high)),
            (
                f"The smallest is {low} and the largest is {high}.",
                f"Examining the collection carefully, the minimum equals {low} and the maximum equals {high}.",
            ),
        )
    elif m := re.search(r"Convert ([\d.]+) (\w+) to (\w+)\. Round to 2 decimal places\.", prompt):
        units = {(u[0], u[2]): u for u in _UNITS}
        if (m[2], m[3]) not in units:
            raise ConfigError(f"conversion prompt from {m[2]!r} to {m[3]!r}: not a known unit pair")
        _, singular, to, factor = units[m[2], m[3]]
        return Task(
            "conversion",
            (round(float(m[1]) * float(factor), 2),),
            0.005 + 1e-9,
            (factor,),
            (
                f"One {singular} is {factor} {to}.",
                f"By international definition, one {singular} corresponds precisely to {factor} {to}.",
            ),
        )
    else:
        raise ConfigError(f"prompt is none of the generated task templates: {prompt[:60]!r}")
    return Task(
        "arithmetic",
        (float(answer),),
        1e-9,
        (str(value),),
        (f"First, {inner} = {value}.", f"Evaluating the innermost operation, {inner} yields {value}."),
    )


def _write_prompt(kind: str, rng: np.random.Generator) -> str:
    """One prompt of the given kind with random numbers."""
    if kind == "arithmetic":
        a, b, c = (int(v) for v in rng.integers(2, 60, 3))
        form = int(rng.integers(0, 4))
        if form < 2:
            return f"Compute the following and state the final answer. What is {a} * {b} {'+-'[form]} {c}?"
        a, b = max(a, b) + 1, min(a, b)  # a - b stays positive
        return f"Compute the following and state the final answer. What is ({a} {'+-'[form - 2]} {b}) * {c}?"
    if kind == "lookup":
        names = rng.choice(len(_ITEMS), size=int(rng.integers(4, 8)), replace=False)
        prices = rng.choice(np.arange(1, 100), size=len(names), replace=False)
        table = "\n".join(f"- {_ITEMS[n]}: {p}" for n, p in zip(names, prices, strict=True))
        return f"Here is a price list:\n{table}\nWhat is the price of {_ITEMS[int(rng.choice(names))]}?"
    if kind == "sorting":
        numbers = rng.choice(np.arange(1, 100), size=int(rng.integers(4, 9)), replace=False)
        order = "ascending" if rng.random() < 0.5 else "descending"
        return f"Sort these numbers in {order} order: {', '.join(str(v) for v in numbers)}."
    plural, _, to, _ = _UNITS[int(rng.integers(0, len(_UNITS)))]
    value = round(float(rng.uniform(1.5, 99.9)), 1)
    return f"Convert {value:g} {plural} to {to}. Round to 2 decimal places."


# -- checking a response -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseScore:
    """What a program checks in one response to a generated prompt.

    :param correct: the final stated answer is the expected one (within the task's tolerance).
    :param complete: every fact of the task's work appears outside the answer statements.
    :param coherent: the answer statements agree and no word is repeated back to back.
    :param words: words in the response (whitespace-separated tokens).
    :param word_length: mean letters per alphabetic word, the vocabulary's complexity.
    :param answer: the checked answer as read from the text, or None when none was found.
    """

    correct: bool
    complete: bool
    coherent: bool
    words: int
    word_length: float
    answer: tuple[float, ...] | None

    @property
    def ratings(self) -> dict[str, float]:
        """The expected HelpSteer ratings (floats in 0-4, before annotator noise and rounding).

        * correctness: 3 + complete if correct, 0.5 + 0.5 complete if not; 0.5 less when incoherent;
        * verbosity: ``4 log(words / 5) / log(25)`` (5 words: 0, 25: 2, 125: 4);
        * coherence: 3.75 when coherent, 1 when not; less for rambling (verbosity above 3);
        * complexity: ``0.5 + 0.75 (word_length - 3.5)`` (plain words: about 0.6, elaborate: about 3.8);
        * helpfulness: 0.5 + 2 correct + complete + 0.5 coherent; less for verbosity above 2.5.
        """
        verbosity = 4.0 * math.log(max(self.words, 1) / 5.0) / math.log(25.0)
        verbosity = min(max(verbosity, 0.0), 4.0)
        correctness = (3.0 + self.complete if self.correct else 0.5 + 0.5 * self.complete) - 0.5 * (not self.coherent)
        helpfulness = 0.5 + 2.0 * self.correct + self.complete + 0.5 * self.coherent - 0.5 * max(0.0, verbosity - 2.5)
        coherence = (3.75 if self.coherent else 1.0) - 0.5 * max(0.0, verbosity - 3.0)
        complexity = 0.5 + 0.75 * (self.word_length - 3.5)
        values = {
            "helpfulness": helpfulness,
            "correctness": correctness,
            "coherence": coherence,
            "complexity": complexity,
            "verbosity": verbosity,
        }
        return {name: min(max(float(v), 0.0), 4.0) for name, v in values.items()}


def score_response(prompt: str | Mapping[str, Any], response: str) -> ResponseScore:
    """Check any response, generated or written by a policy, against its prompt's task.

    :param prompt: a generated prompt, or a rating row holding one under ``"prompt"``.
    :param response: the response text.
    """
    text = prompt["prompt"] if isinstance(prompt, Mapping) else prompt
    return _check(parse_task(str(text)), response)


def _check(task: Task, response: str) -> ResponseScore:
    """:func:`score_response` for a task already parsed (each response to a prompt parses it again otherwise)."""
    statements = [_values(chunk) for chunk in _ANSWER.findall(response)]
    statements = [s for s in statements if s]
    answer: tuple[float, ...] | None
    if statements:
        answer = _pick(statements[-1], task)
        rest = _ANSWER.sub("", response)  # the work is what the response says besides its answers
    else:
        answer, start, end = _fallback(response, task)
        rest = response[:start] + response[end:]
    correct = answer is not None and _matches(answer, task)
    rest_numbers = [float(v) for v in _NUMBER.findall(rest)]
    rest_words = {w.lower() for w in _WORD.findall(rest)}
    complete = all(
        (fact.lower() in rest_words) if fact.isalpha() else any(abs(v - float(fact)) < 1e-9 for v in rest_numbers)
        for fact in task.facts
    )
    distinct = {_pick(s, task) for s in statements}
    coherent = len(distinct) <= 1 and not _STUTTER.search(response)
    letters = [len(w) for w in _WORD.findall(response)]
    return ResponseScore(
        correct=correct,
        complete=complete,
        coherent=coherent,
        words=len(response.split()),
        word_length=float(np.mean(letters)) if letters else 0.0,
        answer=answer,
    )


def _values(chunk: str) -> tuple[float, ...]:
    return tuple(float(v) for v in _NUMBER.findall(chunk))


def _pick(values: tuple[float, ...], task: Task) -> tuple[float, ...]:
    """A statement's answer: all its numbers for sorting, its first number otherwise."""
    return values if task.kind == "sorting" else values[:1]


def _fallback(response: str, task: Task) -> tuple[tuple[float, ...] | None, int, int]:
    """The answer of a response without an ``answer is`` statement, and the span it was read from."""
    if task.kind != "sorting":
        numbers = list(_NUMBER.finditer(response))
        if not numbers:
            return None, 0, 0
        return (float(numbers[-1][0]),), numbers[-1].start(), numbers[-1].end()
    lists = [m for m in _SENTENCE.finditer(response) if len(_values(m[0])) >= 2]
    if not lists:
        return None, 0, 0
    return _values(lists[-1][0]), lists[-1].start(), lists[-1].end()


def _matches(answer: tuple[float, ...], task: Task) -> bool:
    return len(answer) == len(task.answer) and all(
        abs(a - b) <= task.tolerance for a, b in zip(answer, task.answer, strict=True)
    )


# -- generating a rating set -------------------------------------------------------------------------

_FILLER = (
    (
        "I hope this helps you out.",
        "Let me know if you have more questions.",
        "This was a fun one to work on.",
        "It is easy to check this by hand.",
        "You can try a few more like it.",
        "Take your time and read it twice.",
        "Good luck with the rest of your work.",
        "Feel free to ask me again later.",
    ),
    (
        "Comprehensive verification demonstrates considerable methodological reliability.",
        "Systematic computation facilitates reproducible understanding.",
        "Additional clarification remains available whenever necessary.",
        "Meticulous calculation substantially minimizes inadvertent mistakes.",
        "Understanding fundamental procedures strengthens mathematical intuition.",
        "Consistent methodology guarantees dependable conclusions.",
    ),
)
_ANSWER_TEXT = ("The answer is {answer}.", "Therefore, the definitive answer is {answer}.")
_FIRST_TRY = ("At first I thought the answer is {answer}.", "Preliminarily, the answer is {answer}.")


@dataclass(frozen=True)
class Properties:
    """What the generator put into a response (its own labels, for checking :func:`score_response`).

    :param correct: the final answer is right.
    :param complete: the response shows its work.
    :param coherent: neither contradiction nor stutter was written in.
    :param padding: filler sentences added.
    :param elaborate: elaborate vocabulary instead of plain.
    """

    correct: bool
    complete: bool
    coherent: bool
    padding: int
    elaborate: bool


def generate_ratings(
    prompts: int = 100,
    *,
    responses: int = 4,
    seed: int = 0,
    noise: float = 0.5,
    properties: bool = False,
) -> list[dict[str, Any]]:
    """A rating set in the HelpSteer schema: ``prompts`` checkable tasks, ``responses`` rated answers each.

    Task kinds cycle (arithmetic, lookup, sorting, conversion); each response draws its properties
    independently: correct with probability 0.6, complete 0.5, coherent 0.8 (else a contradiction
    or a stutter, evenly), elaborate vocabulary 0.4, 0-6 filler sentences (none with probability
    0.4). Ratings are ``round(clip(expected + noise * N(0, 1), 0, 4))`` with the expected ratings of
    :attr:`ResponseScore.ratings`, measured on the written text.

    :param prompts: how many prompts (tasks).
    :param responses: rated responses per prompt (HelpSteer2 has about 2).
    :param seed: seeds everything; the same arguments give the same rows.
    :param noise: standard deviation of the annotator noise, in rating points (0: noise-free).
    :param properties: add a ``properties`` entry per row (a dict of :class:`Properties`), the
        generator's own labels; the schema columns stay the same.
    """
    if prompts < 1 or responses < 1:
        raise ConfigError(f"generate_ratings needs prompts >= 1 and responses >= 1, got {prompts} and {responses}")
    if not math.isfinite(noise) or noise < 0:
        raise ConfigError(f"noise must be finite and >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    kinds = ("arithmetic", "lookup", "sorting", "conversion")
    rows = []
    for p in range(prompts):
        prompt = _write_prompt(kinds[p % len(kinds)], rng)
        task = parse_task(prompt)
        for _ in range(responses):
            drawn = Properties(
                correct=bool(rng.random() < 0.6),
                complete=bool(rng.random() < 0.5),
                coherent=bool(rng.random() < 0.8),
                padding=0 if rng.random() < 0.4 else int(rng.integers(1, 7)),
                elaborate=bool(rng.random() < 0.4),
            )
            text = _write_response(task, drawn, rng)
            expected = _check(task, text).ratings
            row: dict[str, Any] = {"prompt": prompt, "response": text}
            for name in ATTRIBUTES:
                row[name] = int(np.clip(np.rint(expected[name] + noise * rng.normal()), 0, 4))
            if properties:
                row["properties"] = asdict(drawn)
            rows.append(row)
    return rows


def _write_response(task: Task, drawn: Properties, rng: np.random.Generator) -> str:
    style = int(drawn.elaborate)
    answer = task.answer if drawn.correct else _wrong(task, rng)
    sentences = []
    if drawn.complete:
        sentences.append(task.work[style].format(answer=_format(answer)))  # only lookups state the answer here
    sentences.append(_ANSWER_TEXT[style].format(answer=_format(answer)))
    fillers = _FILLER[style]
    picks = rng.choice(len(fillers), size=min(drawn.padding, len(fillers)), replace=False)
    sentences += [fillers[i] for i in picks]
    incoherence = "" if drawn.coherent else ("contradiction" if rng.random() < 0.5 else "stutter")
    if incoherence == "contradiction":
        other = _wrong(task, rng, avoid=answer)
        sentences.insert(0, _FIRST_TRY[style].format(answer=_format(other)))
    text = " ".join(sentences)
    if incoherence == "stutter":
        words = text.split(" ")
        candidates = [i for i, w in enumerate(words) if w.isalpha()]
        for i in sorted(rng.choice(candidates, size=min(2, len(candidates)), replace=False), reverse=True):
            words.insert(int(i), words[int(i)])
        text = " ".join(words)
    return text


def _wrong(task: Task, rng: np.random.Generator, avoid: tuple[float, ...] | None = None) -> tuple[float, ...]:
    """A plausible wrong answer: off by a little, a wrong conversion factor, or two sorted items swapped.

    Never the expected answer, ``avoid``, or a number among the task's facts (a wrong answer must not
    make an incomplete response look complete).
    """
    facts = {float(f) for f in task.facts if not f.isalpha()}
    while True:
        if task.kind == "sorting":
            values = list(task.answer)
            i = int(rng.integers(0, len(values) - 1))
            values[i], values[i + 1] = values[i + 1], values[i]
            wrong = tuple(values)
        elif task.kind == "conversion":
            wrong = (round(task.answer[0] * float(rng.choice([0.1, 0.5, 2.0, 10.0])) + float(rng.integers(0, 3)), 2),)
        else:
            step = int(rng.integers(1, 10)) * (1 if rng.random() < 0.5 else -1)
            wrong = (task.answer[0] + step,)
        if not _matches(wrong, task) and wrong != avoid and (task.kind == "sorting" or wrong[0] not in facts):
            return wrong


def _format(values: tuple[float, ...]) -> str:
    return ", ".join(f"{v:.2f}".rstrip("0").rstrip(".") for v in values)


def save_ratings(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write rating rows as JSONL, or as Parquet (needs pyarrow) when the suffix is ``.parquet``.

    :param rows: rows as :func:`generate_ratings` returns them.
    :param path: the output file.
    """
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".parquet"):
        raise ConfigError(f"out: {path}: write ratings to a .jsonl or .parquet file")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        from heron.lm.pairs import _pyarrow_parquet

        pq = _pyarrow_parquet()
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    with path.open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path
