"""The synthetic HelpSteer-schema rating set and the program that scores responses to its prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from heron import ConfigError
from heron.lm import read_ratings
from heron.lm.ratings import COLUMNS, generate_ratings, parse_task, save_ratings, score_response

DATA = Path(__file__).parent / "data" / "helpsteer-synthetic.jsonl"
ARITHMETIC = "Compute the following and state the final answer. What is 51 * 38 - 31?"
SORTING = "Sort these numbers in descending order: 12, 5, 33, 7."
CONVERSION = "Convert 3.5 miles to kilometers. Round to 2 decimal places."
LOOKUP = "Here is a price list:\n- apple: 12\n- pear: 7\nWhat is the price of pear?"


@pytest.fixture(scope="module")
def rated() -> list[dict]:
    return generate_ratings(120, responses=4, seed=7, properties=True)


def test_generation_is_deterministic_by_seed() -> None:
    assert generate_ratings(8, seed=3) == generate_ratings(8, seed=3)
    assert generate_ratings(8, seed=3) != generate_ratings(8, seed=4)


def test_rows_have_exactly_the_helpsteer_schema(rated: list[dict]) -> None:
    rows = generate_ratings(12, responses=3, seed=1)
    assert all(tuple(row) == COLUMNS for row in rows) and len(rows) == 36
    assert all(isinstance(row[c], int) and 0 <= row[c] <= 4 for row in rows for c in COLUMNS[2:])
    assert {parse_task(row["prompt"]).kind for row in rows} == {"arithmetic", "lookup", "sorting", "conversion"}
    prompts = [row["prompt"] for row in rows]
    assert all(prompts.count(p) == 3 for p in prompts)


def test_the_committed_file_is_the_generator_at_seed_0() -> None:
    assert DATA.stat().st_size < 200_000
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    # Regenerate with: heron lm generate --prompts 60 --responses 4 --seed 0 --out tests/data/helpsteer-synthetic.jsonl
    assert rows == generate_ratings(60, responses=4, seed=0)


def test_score_response_agrees_with_the_generators_labels(rated: list[dict]) -> None:
    scores = [score_response(row, row["response"]) for row in rated]
    for row, score in zip(rated, scores, strict=True):
        drawn = row["properties"]
        assert (score.correct, score.complete, score.coherent) == (
            drawn["correct"],
            drawn["complete"],
            drawn["coherent"],
        ), row["response"]
    plain = [s.word_length for s, r in zip(scores, rated, strict=True) if not r["properties"]["elaborate"]]
    elaborate = [s.word_length for s, r in zip(scores, rated, strict=True) if r["properties"]["elaborate"]]
    assert min(elaborate) > max(plain)
    padding = np.array([r["properties"]["padding"] for r in rated])
    words = np.array([s.words for s in scores])
    assert np.corrcoef(padding, words)[0, 1] > 0.8


def test_ratings_follow_the_checked_properties(rated: list[dict]) -> None:
    def gap(attribute: str, prop: str) -> float:
        yes = [r[attribute] for r in rated if r["properties"][prop]]
        no = [r[attribute] for r in rated if not r["properties"][prop]]
        return float(np.mean(yes) - np.mean(no))

    assert gap("correctness", "correct") > 2.0
    assert gap("helpfulness", "correct") > 1.5
    assert gap("helpfulness", "complete") > 0.5
    assert gap("coherence", "coherent") > 2.0
    assert gap("complexity", "elaborate") > 2.0
    padding = [r["properties"]["padding"] for r in rated]
    assert np.corrcoef(padding, [r["verbosity"] for r in rated])[0, 1] > 0.6


def test_noise_free_ratings_are_the_rounded_expected_ratings() -> None:
    for row in generate_ratings(10, seed=2, noise=0.0):
        expected = score_response(row["prompt"], row["response"]).ratings
        assert all(row[name] == int(np.rint(value)) for name, value in expected.items())
    with pytest.raises(ConfigError, match="noise"):
        generate_ratings(2, noise=-1.0)
    with pytest.raises(ConfigError, match="prompts >= 1"):
        generate_ratings(0)


@pytest.mark.parametrize(
    ("prompt", "response", "correct", "complete", "coherent"),
    [
        (ARITHMETIC, "51 * 38 = 1938, minus 31 gives 1907.", True, True, True),  # no "answer is": last number
        (ARITHMETIC, "The answer is 1907.", True, False, True),
        (ARITHMETIC, "The answer is 1906.", False, False, True),
        (ARITHMETIC, "The answer is 1,907.", False, False, True),  # thousands separators are not read
        (ARITHMETIC, "The answer is 1900. No, the answer is 1907.", True, False, False),
        (ARITHMETIC, "The the answer is 1907.", True, False, False),
        (ARITHMETIC, "I do not know.", False, False, True),
        (SORTING, "Smallest 5, largest 33. The answer is 33, 12, 7, 5.", True, True, True),
        (SORTING, "Sorted: 33, 12, 7, 5", True, False, True),
        (SORTING, "The answer is 5, 7, 12, 33.", False, False, True),
        (CONVERSION, "1 mile is 1.609344 km, so the answer is 5.633 km.", True, True, True),
        (CONVERSION, "The answer is 5.64.", False, False, True),
        (LOOKUP, "Pear costs 7.", True, True, True),
        (LOOKUP, "The answer is 12.", False, False, True),
    ],
)
def test_score_response_checks_any_text(prompt, response, correct, complete, coherent) -> None:
    score = score_response({"prompt": prompt}, response)
    assert (score.correct, score.complete, score.coherent) == (correct, complete, coherent)
    assert all(0.0 <= v <= 4.0 for v in score.ratings.values())


def test_unknown_prompts_are_refused() -> None:
    with pytest.raises(ConfigError, match="none of the generated task templates"):
        score_response("Write a poem about the sea.", "The sea is wide.")
    with pytest.raises(ConfigError, match="does not hold"):
        parse_task("Here is a price list:\n- apple: 1\nWhat is the price of kiwi?")


def test_save_ratings_jsonl_and_parquet(tmp_path: Path) -> None:
    rows = generate_ratings(3, seed=0)
    assert read_ratings(save_ratings(rows, tmp_path / "r.jsonl"))["response"] == [r["response"] for r in rows]
    with pytest.raises(ConfigError, match=r"\.jsonl or \.parquet"):
        save_ratings(rows, tmp_path / "r.csv")
    pytest.importorskip("pyarrow")
    columns = read_ratings(save_ratings(rows, tmp_path / "r.parquet"))
    assert columns["helpfulness"].tolist() == [r["helpfulness"] for r in rows]
