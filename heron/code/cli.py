"""``heron code``: train a code-generating policy with trl on a ranking of program factors, and
measure Pass@k of a model on code problems, its programs run in the sandbox.

A typer sub-app mounted by ``heron.cli``. Like the main app, each command imports what it needs
itself and reports bad input as one ``error: ...`` line with exit code 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

code_app = typer.Typer(
    help="Code generation: policies trained with trl (GRPO, RLOO) on programs run in the sandbox; Pass@k.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _one_line_errors(fn: F) -> F:
    """``heron.cli``'s one-line errors, looked up when the command runs (``heron.cli`` imports this module)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from heron.cli import _one_line_errors as one_line_errors

        return one_line_errors(fn)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _print_eval(title: str, results: dict[str, Any]) -> None:
    """Pass@k and the status mix as a rich table, one row per figure (it fits any terminal)."""
    from rich.table import Table

    from heron.cli import console

    table = Table(title=title)
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("problems x samples", f"{results['problems']} x {results['samples']}")
    table.add_row("temperature", f"{results['temperature']:g}")
    for key in (k for k in results if k.startswith("pass@")):
        table.add_row(key, f"{results[key]:.3f}")
    for status, count in results["status"].items():
        table.add_row(status, str(count))
    console.print(table)


@code_app.command()
@_one_line_errors
def train(
    config: Annotated[Path, typer.Argument(help="YAML config of the run (see docs/code.md).", show_default=False)],
    method: Annotated[
        str | None,
        typer.Option(help="heron, coderl, ground-truth, weighted-sum or flat-preference (overrides the config)."),
    ] = None,
    trainer: Annotated[str | None, typer.Option(help="grpo or rloo (overrides the config).")] = None,
    model: Annotated[
        str | None, typer.Option(help="tiny, smollm2 or a model directory (overrides the config).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (overrides the config).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (overrides the config).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (overrides the config).")] = None,
    progress: Annotated[bool, typer.Option(help="Show trl's progress bar.")] = True,
) -> None:
    """Warm-start, train a policy with trl on the method's reward, and evaluate Pass@k on the test split."""
    from heron.cli import console
    from heron.code.train import train_code, validate
    from heron.config import read_yaml

    data = read_yaml(config)
    overrides = {"method": method, "trainer": trainer, "model": model, "steps": steps, "seed": seed}
    overrides["out"] = None if out is None else str(out)
    overrides = {key: value for key, value in overrides.items() if value is not None}
    settings = validate({**data, **overrides} if isinstance(data, dict) else data, str(config))
    result = train_code(settings, progress=progress)
    if "before" in result.eval:
        _print_eval("before RL", result.eval["before"])
    _print_eval(f"after {settings.steps} {settings.trainer} steps ({settings.method})", result.eval)
    console.print(f"wrote {result.out}/config.yaml, metrics.csv, eval.json, model/")


@code_app.command("eval")
@_one_line_errors
def eval_(
    model: Annotated[
        str,
        typer.Argument(help="A model directory (heron code train's out/model), tiny or smollm2.", show_default=False),
    ],
    task: Annotated[str, typer.Option(help="humaneval or mbpp-like (its test split).")] = "humaneval",
    problems: Annotated[int, typer.Option(help="Evaluate the first this many problems (0: all).", min=0)] = 0,
    samples: Annotated[int, typer.Option(help="Completions per problem (n).", min=1)] = 1,
    k: Annotated[list[int] | None, typer.Option(help="Report Pass@k for this k (repeatable; k <= samples).")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0: greedy).", min=0.0)] = 0.0,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per completion.", min=1)] = 128,
    batch_size: Annotated[int, typer.Option(help="Sequences generated together.", min=1)] = 16,
    timeout: Annotated[float, typer.Option(help="Seconds per program in the sandbox.", min=0.1)] = 5.0,
    seed: Annotated[int, typer.Option(help="Sampling seed; mbpp-like: which problems.")] = 0,
    prompt_format: Annotated[
        str, typer.Option(help="completion (the bare prompt) or chat (an instruct model's chat template).")
    ] = "completion",
    out: Annotated[Path, typer.Option(help="Where to write the results (JSON).")] = Path("eval.json"),
) -> None:
    """Pass@1 and Pass@k (Chen et al.'s unbiased estimator) and the status mix of a model's programs."""
    from heron.code.evaluate import PROMPT_FORMATS, evaluate
    from heron.code.tasks import human_eval, mbpp_like
    from heron.code.train import reference_body
    from heron.errors import ConfigError
    from heron.models import load_causal_lm

    if task == "humaneval":
        chosen = human_eval()
    elif task == "mbpp-like":
        chosen = mbpp_like(problems or 100, split="test", seed=seed)
    else:
        raise ConfigError(f"--task: expected humaneval or mbpp-like, got {task!r}")
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError(f"--prompt-format: expected completion or chat, got {prompt_format!r}")
    chosen = chosen[:problems] if problems else chosen
    texts = [t for p in chosen for t in (p.prompt, reference_body(p))]
    policy, tokenizer = load_causal_lm(model, texts=texts, seed=seed)
    results = evaluate(
        policy,
        tokenizer,
        chosen,
        samples=samples,
        ks=k or [1],
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        timeout_s=timeout,
        seed=seed,
        prompt_format=prompt_format,
    )
    results = {"model": model, "task": task, **results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    _print_eval(f"{model} on {task}", results)
    from heron.cli import console

    console.print(f"wrote {out}")
