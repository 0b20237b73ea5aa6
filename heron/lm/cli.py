"""``heron lm``: preference pairs from rating files, the synthetic HelpSteer-schema rating set, and
reward models / DPO trained on those pairs with trl.

A typer sub-app mounted by ``heron.cli``. Like the main app, each command imports what it needs
itself and reports bad input as one ``error: ...`` line with exit code 2.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from heron.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

lm_app = typer.Typer(
    help="Language-model alignment: preference pairs from multi-attribute ratings (HelpSteer), trained on with trl.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _one_line_errors(fn: F) -> F:
    """``heron.cli``'s one-line errors, looked up when the command runs.

    ``heron.cli`` imports this module to mount ``lm_app``, so importing ``heron.cli`` here at import
    time would make the two modules' import order matter.
    """

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from heron.cli import _one_line_errors as one_line_errors

        return one_line_errors(fn)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@lm_app.command()
@_one_line_errors
def pairs(
    ratings: Annotated[
        str, typer.Argument(help="Rating file (.jsonl, .json, .csv, .tsv, .parquet) or a Hugging Face dataset name.")
    ],
    hierarchy: Annotated[
        str,
        typer.Option(
            help='Rated attributes, most important first: "correctness>helpfulness>coherence"; '
            "each NAME[:max|min][:MARGIN[std]], e.g. verbosity:min or helpfulness:1."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output file: .jsonl, .csv or .parquet.")] = Path("pairs.jsonl"),
    prompt: Annotated[str, typer.Option(help="Column holding the prompt.")] = "prompt",
    response: Annotated[str, typer.Option(help="Column holding the rated response.")] = "response",
    split: Annotated[str, typer.Option(help="Split of a Hugging Face dataset.")] = "train",
) -> None:
    """Compare every two responses to the same prompt by the ranking and write trl preference rows."""
    from heron.cli import console
    from heron.lm.pairs import pairs_from_ratings, parse_hierarchy, read_ratings

    try:
        ranking = parse_hierarchy(hierarchy)
    except ConfigError as err:
        raise ConfigError(f"--hierarchy: {err}") from None
    table = read_ratings(ratings, split=split)
    try:
        result = pairs_from_ratings(table, ranking, prompt=prompt, response=response)
    except ConfigError as err:
        raise ConfigError(f"{ratings}: {err}") from None
    result.write(out)
    console.print(result.report.summary(), soft_wrap=True)
    console.print(f"wrote {len(result)} pairs to {out}")


@lm_app.command()
@_one_line_errors
def generate(
    out: Annotated[Path, typer.Option(help="Output file: .jsonl or .parquet.")] = Path("helpsteer-synthetic.jsonl"),
    prompts: Annotated[int, typer.Option(help="Prompts (checkable tasks).", min=1)] = 100,
    responses: Annotated[int, typer.Option(help="Rated responses per prompt.", min=1)] = 4,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    noise: Annotated[float, typer.Option(help="Annotator noise (std, rating points).", min=0.0)] = 0.5,
) -> None:
    """Write a synthetic rating set in the HelpSteer schema whose answers a program can check."""
    from heron.cli import console
    from heron.lm.ratings import generate_ratings, save_ratings

    rows = generate_ratings(prompts, responses=responses, seed=seed, noise=noise)
    save_ratings(rows, out)
    console.print(f"wrote {len(rows)} rated responses to {prompts} prompts to {out}")


@lm_app.command()
@_one_line_errors
def train(
    config: Annotated[Path, typer.Argument(help="YAML config of the run (see docs/lm.md).", show_default=False)],
    method: Annotated[
        str | None, typer.Option(help="heron, weighted-sum, helpfulness or flat-preference (overrides the config).")
    ] = None,
    trainer: Annotated[str | None, typer.Option(help="reward, dpo, grpo or rloo (overrides the config).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (overrides the config).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (overrides the config).")] = None,
    progress: Annotated[bool, typer.Option(help="Show trl's progress bar.")] = True,
) -> None:
    """Train a reward model or a DPO policy with trl on pairs labeled by the method, or a policy online
    (GRPO, RLOO) on the method's reward; evaluate on held-out prompts."""
    from heron.cli import console
    from heron.config import read_yaml
    from heron.lm.online import is_online
    from heron.lm.train import train_lm, validate

    data = read_yaml(config)
    overrides = {"method": method, "trainer": trainer, "seed": seed, "out": None if out is None else str(out)}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    # anything but a mapping is left to validate, whose one-line error names the file
    data = {**data, **overrides} if isinstance(data, dict) else data
    if is_online(data):
        _train_online(data, str(config), progress)
        return
    settings = validate(data, str(config))
    result = train_lm(settings, progress=progress)
    console.print(result.metrics["train_pairs"], soft_wrap=True)
    console.print(f"held-out accuracy ({settings.trainer}, trained on {result.metrics['trained_on']} labels):")
    for row in result.accuracy:
        mark = "  <- trained on" if row["trained_on"] else ""
        value = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        console.print(f"  {row['labels']:<20} {value:>5}  ({row['pairs']} pairs){mark}")
    corr = result.metrics["score_length_corr"]
    if corr is not None:
        console.print(f"held-out score vs response length in words: correlation {corr:.2f}")
    console.print(f"wrote {result.out}/metrics.json, accuracy.csv, model/")


def _train_online(data: dict[str, Any], source: str, progress: bool) -> None:
    """``heron lm train`` with ``trainer: grpo`` or ``rloo``: the run and its before/after table."""
    from heron.cli import console
    from heron.lm.online import train_online, validate_online

    settings = validate_online(data, source)
    result = train_online(settings, progress=progress)
    summary = result.summary
    console.print(
        f"{settings.trainer} on the {settings.method} reward ({', '.join(summary['reward_factors'])}): "
        f"{summary['steps']} steps, {summary['completions']} completions, {summary['wall_clock_s']:.0f} s",
        soft_wrap=True,
    )
    console.print(f"held-out prompts ({summary['eval_prompts']}): before -> after training")
    keys = ["correct", "complete", "coherent", *(k for k in result.after if k.startswith("factor/")), "length"]
    for key in keys:
        console.print(f"  {key:<22} {result.before[key]:7.3f} -> {result.after[key]:7.3f}")
    console.print(f"wrote {result.out}/metrics.csv, eval.json, samples.jsonl, model/")
