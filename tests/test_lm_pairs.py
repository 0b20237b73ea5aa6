"""Pairs from ratings: checked against a per-pair reference; readers, writers and the ``heron lm`` CLI."""

from __future__ import annotations

import csv
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from heron import ConfigError, Factor, Hierarchy
from heron.hierarchy import finite_std
from heron.lm import pairs_from_ratings, parse_hierarchy, read_ratings
from heron.lm.cli import lm_app
from heron.lm.pairs import _within_group_pairs

DATA = Path(__file__).parent / "data" / "helpsteer-synthetic.jsonl"
HELPSTEER = ("prompt", "response", "helpfulness", "correctness", "coherence", "complexity", "verbosity")
runner = CliRunner()


# -- the reference: one pair at a time ---------------------------------------------------------------


def reference_pairs(rows, hierarchy):
    """Every two responses to a prompt (prompts in order of first appearance, pairs (i, j) by j then i)."""
    names = hierarchy.names
    z = np.array([[math.nan if r[n] is None else float(r[n]) for n in names] for r in rows]).reshape(len(rows), -1)
    scale = finite_std(z)  # over the rated responses, each once (finite_std itself is tested in test_hierarchy)
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    out, decided, tied, missing = [], dict.fromkeys(names, 0), 0, 0
    for prompt in prompts:
        members = [i for i, r in enumerate(rows) if r["prompt"] == prompt]
        for q in range(len(members)):
            for p in range(q):
                a, b = members[p], members[q]
                result = hierarchy.compare_detailed(z[[a]], z[[b]], scale=scale)
                label, level = int(result.labels[0]), int(result.levels[0])
                if label == 0:
                    missing += bool(result.nonfinite[0])
                    tied += not result.nonfinite[0]
                    continue
                chosen, rejected = (a, b) if label > 0 else (b, a)
                gap = hierarchy.factors[level].sign * (z[chosen, level] - z[rejected, level])
                decided[names[level]] += 1
                out.append(
                    {
                        "prompt": prompt,
                        "chosen": rows[chosen]["response"],
                        "rejected": rows[rejected]["response"],
                        "attribute": names[level],
                        "gap": float(gap),
                    }
                )
    return out, decided, tied, missing


RATING = st.one_of(st.integers(0, 4), st.sampled_from([0.5, 2.5, None]))


@st.composite
def tables(draw):
    n = draw(st.integers(0, 30))
    prompts = draw(st.lists(st.sampled_from(["p", "q", "r", "s", "t"]), min_size=n, max_size=n))
    rows = [
        {"prompt": p, "response": f"response {i}", "a": draw(RATING), "b": draw(RATING), "c": draw(RATING)}
        for i, p in enumerate(prompts)
    ]
    names = draw(st.permutations(["a", "b", "c"]))[: draw(st.integers(1, 3))]
    factors = [
        Factor(
            name,
            draw(st.sampled_from(["max", "min"])),
            draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
            draw(st.sampled_from(["absolute", "std"])),
        )
        for name in names
    ]
    return rows, Hierarchy(factors)


@settings(max_examples=300, deadline=None)
@given(tables())
def test_pairs_equal_the_per_pair_reference(case) -> None:
    rows, hierarchy = case
    if not rows:
        with pytest.raises(ConfigError, match="no rows"):
            pairs_from_ratings(rows, hierarchy)
        return
    result = pairs_from_ratings(rows, hierarchy)
    expected, decided, tied, missing = reference_pairs(rows, hierarchy)
    assert result.rows == expected
    report = result.report
    assert report.decided == decided and report.tied == tied and report.missing == missing
    sizes = [sum(r["prompt"] == p for r in rows) for p in dict.fromkeys(r["prompt"] for r in rows)]
    assert report.compared == sum(s * (s - 1) // 2 for s in sizes) == report.pairs + tied + missing
    assert report.rows == len(rows) and report.prompts == len(sizes)
    assert all(row["gap"] > 0 for row in result.rows)


def test_pair_enumeration_holds_for_large_groups() -> None:
    size = 1600  # 1.3 M pairs: k reaches values where a float square root needs its correction
    left, right = _within_group_pairs(np.zeros(size, dtype=np.int64))
    later, earlier = np.tril_indices(size, -1)
    assert np.array_equal(left, earlier) and np.array_equal(right, later)
    codes = np.array([0, 1, 0, 3, 1, 0, 1])  # each row's group: the first row of its prompt
    left, right = _within_group_pairs(codes)
    assert list(zip(left.tolist(), right.tolist(), strict=True)) == [(0, 2), (0, 5), (2, 5), (1, 4), (1, 6), (4, 6)]


def test_rows_and_columns_give_the_same_pairs_and_chats_group_by_content() -> None:
    chat = [{"role": "user", "content": "hi"}]
    rows = [
        {"prompt": chat, "response": "a", "h": 1},
        {"prompt": [dict(m) for m in chat], "response": "b", "h": 3},
        {"prompt": "hi", "response": "c", "h": 4},
    ]
    by_rows = pairs_from_ratings(rows, "h")
    columns = {name: [r[name] for r in rows] for name in rows[0]}
    assert by_rows.rows == pairs_from_ratings(columns, ["h"]).rows
    assert by_rows.rows == [{"prompt": chat, "chosen": "b", "rejected": "a", "attribute": "h", "gap": 2.0}]
    assert len(by_rows) == 1 and list(by_rows) == by_rows.rows


def test_std_margins_use_the_spread_of_the_rated_responses() -> None:
    # One prompt with 3 responses and one with 2: over pairs, the first group's values would weigh double.
    rows = [
        {"prompt": p, "response": str(i), "h": h} for i, (p, h) in enumerate(zip("aaabb", [0, 0, 4, 1, 2], strict=True))
    ]
    std = float(np.std([0, 0, 4, 1, 2]))
    pairs = pairs_from_ratings(rows, Hierarchy([Factor("h", margin=1.0 / std, margin_mode="std")]))
    assert [(r["chosen"], r["rejected"]) for r in pairs.rows] == [("2", "0"), ("2", "1")]  # a gap of 1 ties
    assert pairs.report.tied == 2


def test_bad_tables_raise_one_line_errors() -> None:
    rows = [{"prompt": "p", "response": "a", "h": 1}, {"prompt": "p", "response": "b", "h": "high"}]
    with pytest.raises(ConfigError, match=r"column 'h', row 2: rating 'high' is not a number"):
        pairs_from_ratings(rows, "h")
    with pytest.raises(ConfigError, match=r"hierarchy factor 'g' is not a column .*columns: prompt, response, h"):
        pairs_from_ratings(rows, "h>g")
    with pytest.raises(ConfigError, match="response column 'text'"):
        pairs_from_ratings(rows, "h", response="text")
    with pytest.raises(ConfigError, match="no rows"):
        pairs_from_ratings({"prompt": [], "response": [], "h": []}, "h")
    with pytest.raises(ConfigError, match="differ in length"):
        pairs_from_ratings({"prompt": ["p"], "response": [], "h": [1]}, "h")
    with pytest.raises(ConfigError, match="row 1: rating \\[1, 2\\]"):
        pairs_from_ratings([{"prompt": "p", "response": "a", "h": [1, 2]}], "h")


def test_parse_hierarchy() -> None:
    ranking = parse_hierarchy(" correctness > verbosity:min > coherence:0.5std > helpfulness:max:1 ")
    assert ranking.factors == (
        Factor("correctness"),
        Factor("verbosity", "min"),
        Factor("coherence", "max", 0.5, "std"),
        Factor("helpfulness", "max", 1.0),
    )
    for text, message in [
        ("a>>b", "empty factor name"),
        ("a:often", "'often' is neither max, min nor a margin"),
        ("a>a", "duplicate factor 'a'"),
        ("a:-1", "margin must be finite and >= 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_hierarchy(text)


# -- readers and writers -----------------------------------------------------------------------------


def test_readers_agree_across_formats(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:40]]
    expected = pairs_from_ratings(rows, "correctness>helpfulness").rows
    (tmp_path / "r.json").write_text(json.dumps(rows))
    with (tmp_path / "r.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HELPSTEER)
        writer.writeheader()
        writer.writerows(rows)
    with (tmp_path / "r.tsv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HELPSTEER, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    for path in [DATA, tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.tsv"]:
        columns = read_ratings(path)
        if path == DATA:
            assert list(columns) == list(HELPSTEER) and len(columns["prompt"]) == 240
            continue
        assert pairs_from_ratings(columns, "correctness>helpfulness").rows == expected, path


def test_parquet_in_the_helpsteer_schema_loads(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    schema = pa.schema([(c, pa.string()) for c in HELPSTEER[:2]] + [(c, pa.int64()) for c in HELPSTEER[2:]])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "train.parquet")
    columns = read_ratings(tmp_path / "train.parquet")
    assert list(columns) == list(HELPSTEER) and isinstance(columns["helpfulness"], np.ndarray)
    ranking = "helpfulness>correctness>coherence>complexity>verbosity:min"
    assert pairs_from_ratings(columns, ranking).rows == pairs_from_ratings(rows, ranking).rows
    # A nullable rating column (HelpSteer2 has none, other sets may): nulls are missing ratings.
    rows[1]["helpfulness"] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "nulls.parquet")
    report = pairs_from_ratings(read_ratings(tmp_path / "nulls.parquet"), "helpfulness").report
    assert report.missing == 3  # the first prompt has 4 responses: row 2 meets the 3 others


def test_pairs_write_jsonl_csv_parquet(tmp_path: Path) -> None:
    pairs = pairs_from_ratings(read_ratings(DATA), "correctness>helpfulness")
    assert [json.loads(line) for line in pairs.write(tmp_path / "p.jsonl").read_text().splitlines()] == pairs.rows
    with pairs.write(tmp_path / "p.csv").open(newline="") as f:
        written = list(csv.DictReader(f))
    assert [r["chosen"] for r in written] == [r["chosen"] for r in pairs.rows]
    with pytest.raises(ConfigError, match=r"\.jsonl, \.csv or \.parquet"):
        pairs.write(tmp_path / "p.txt")
    pq = pytest.importorskip("pyarrow.parquet")
    assert pq.read_table(pairs.write(tmp_path / "p.parquet")).to_pylist() == pairs.rows


def test_bad_files_raise_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = {
        "empty.jsonl": ("", "no rows"),
        "blank.csv": ("", "no rows"),
        "header.csv": ("prompt,response,h\n", "no rows"),
        "bad.jsonl": ('{"prompt": "p"}\n{"prompt": \n', "line 2 is not valid JSON"),
        "list.jsonl": ("[1, 2]\n", "item 1 is not a JSON object"),
        "short.csv": ("prompt,response,h\np,a\n", "line 2 has 2 fields, the header has 3"),
        "r.xlsx": ("x", "unknown rating file type '.xlsx'"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=message):
            read_ratings(tmp_path / name)
    with pytest.raises(ConfigError, match="no such file"):
        read_ratings(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="is a directory"):
        read_ratings(tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed: the import fails
    with pytest.raises(ConfigError, match="needs `pip install datasets`"):
        read_ratings("nvidia/HelpSteer2")


def test_dataset_names_load_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:8]]

    class Loaded:
        def to_dict(self) -> dict:
            return {name: [r[name] for r in rows] for name in HELPSTEER}

    def load_dataset(name: str, split: str) -> Loaded:
        if name == "nvidia/HelpSteer2" and split == "validation":
            return Loaded()
        raise ConnectionError(f"cannot reach the hub for {name}\n(details)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    columns = read_ratings("nvidia/HelpSteer2", split="validation")
    assert pairs_from_ratings(columns, "helpfulness").rows == pairs_from_ratings(rows, "helpfulness").rows
    with pytest.raises(ConfigError, match=r"^nvidia/HelpSteer: could not load .*ConnectionError: cannot reach [^\n]*$"):
        read_ratings("nvidia/HelpSteer")


def test_missing_csv_cells_are_missing_ratings(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("prompt,response,h,c\np,a,1,\np,b,1,2\np,c,3,\n")
    report = pairs_from_ratings(read_ratings(path), "h>c").report
    assert report.decided == {"h": 2, "c": 0} and report.missing == 1 and report.tied == 0


def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "r.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ConfigError, match="Parquet needs pyarrow"):
        read_ratings(tmp_path / "r.parquet")


# -- the command line --------------------------------------------------------------------------------


def test_cli_writes_pairs_and_reports_levels(tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    result = runner.invoke(
        lm_app, ["pairs", str(DATA), "--hierarchy", "correctness>helpfulness>coherence", "--out", str(out)]
    )
    assert result.exit_code == 0, result.stderr
    report = pairs_from_ratings(read_ratings(DATA), "correctness>helpfulness>coherence").report
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == report.pairs > 0
    assert set(written[0]) == {"prompt", "chosen", "rejected", "attribute", "gap"}
    for name, count in report.decided.items():
        assert f"{name} {count} (" in result.stdout
    assert f"tied {report.tied} (" in result.stdout and f"wrote {report.pairs} pairs" in result.stdout


@pytest.mark.parametrize(
    ("content", "hierarchy", "message"),
    [
        (None, "correctness>accuracy", "hierarchy factor 'accuracy' is not a column"),
        ("prompt,response,h\np,a,1\np,b,lots\n", "h", "column 'h', row 2: rating 'lots' is not a number"),
        ("", "h", "no rows"),
        (None, "correctness:sometimes", "--hierarchy: "),
    ],
)
def test_cli_bad_input_is_one_line_with_exit_code_2(tmp_path: Path, content, hierarchy, message) -> None:
    path = DATA
    if content is not None:
        path = tmp_path / "ratings.csv"
        path.write_text(content)
    result = runner.invoke(lm_app, ["pairs", str(path), "--hierarchy", hierarchy, "--out", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "p.jsonl").exists()


def test_cli_generates_a_rating_set(tmp_path: Path) -> None:
    out = tmp_path / "ratings.jsonl"
    result = runner.invoke(lm_app, ["generate", "--prompts", "5", "--responses", "3", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    columns = read_ratings(out)
    assert list(columns) == list(HELPSTEER) and len(columns["prompt"]) == 15
