"""``heron``: a thin command-line face over the Python API."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from heron.errors import ConfigError

if TYPE_CHECKING:
    from rich.table import Table

# Only typer, rich's console and heron's errors load at import time (`heron --help` stays fast):
# each command imports what it needs itself.

# click's base error class, reached through typer's public BadParameter (typer vendors click).
_CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineUsage(typer.core.TyperGroup):
    """Errors of the command line itself (an unknown flag, ``--seed abc``, a missing argument) end
    like every other bad input: exit code 2 and one line on stderr, instead of click's usage box."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        call: dict[str, Any] = {"args": args, "prog_name": prog_name, "complete_var": complete_var}
        call |= {"standalone_mode": False, "windows_expand_args": windows_expand_args, **extra}
        if not standalone_mode:
            return super().main(**call)
        try:
            code = super().main(**call)
        except _CLICK_ERROR as err:
            message = " ".join(err.format_message().split())  # type: ignore[attr-defined]
            ctx = getattr(err, "ctx", None)
            where = ctx.command_path if ctx is not None else "heron"
            print(f"error: {message} (see `{where} --help`)", file=sys.stderr)
            sys.exit(2)
        except typer.Abort:
            print("aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineUsage,
    help="heron-rl: train Stable-Baselines3 agents from a ranking of reward factors (HERON).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(fn: F) -> F:
    """Bad input ends the command with exit code 2 and one line on stderr, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print(
                "interrupted: a run continues from its last checkpoint with `heron train --resume RUN_DIR`",
                file=sys.stderr,
            )
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@_one_line_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML run config.", show_default=False)] = None,
    method: Annotated[str | None, typer.Option(help="heron, ground-truth, weighted-sum or flat-preference.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    total_timesteps: Annotated[int | None, typer.Option(help="Env steps to train for.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/<config>-<method>-s<seed>-<time>).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this directory from its last checkpoint.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train one agent from a config file (or resume an interrupted run).

    A `heron compare` file trains its base config (its variants and threshold are for compare).
    """
    if resume is not None:
        if config is not None:
            raise ConfigError("give either CONFIG or --resume RUN_DIR, not both")
        if not resume.exists():
            raise ConfigError(f"resume: {resume} does not exist")
        from heron.sb3.run import resume as resume_run

        result = resume_run(resume, progress=progress)
    else:
        if config is None:
            raise ConfigError("missing CONFIG (a YAML run config) or --resume RUN_DIR")
        from heron import config as configs

        data, variants, threshold, _ = configs.load_sweep(config)  # the file's own errors name the file
        if variants or threshold is not None:
            uses = [f"runs its variants ({', '.join(variants)})"] if variants else []
            uses += ["uses its threshold"] if threshold is not None else []
            console.print(
                f"[dim]{config}: training the base config; `heron compare` {' and '.join(uses)}[/]", soft_wrap=True
            )
        overrides = {"method": method, "seed": seed, "total_timesteps": total_timesteps}
        for key, value in overrides.items():
            if value is not None:
                data[key] = value
                flag = "--" + key.replace("_", "-")
                try:
                    configs.validate(data, flag)
                except ConfigError as err:  # "--method: method: unknown ..." names the option once
                    raise ConfigError(str(err).replace(f"{flag}: {key}: ", f"{flag}: ", 1)) from None
        cfg = configs.validate(data, str(config))
        from heron.sb3.run import run_config

        if out is None:
            out = Path("runs") / f"{config.stem}-{cfg.method}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        result = run_config(cfg, out=out, progress=progress)
    last = result.metrics[-1]
    console.print(
        f"final ground-truth return {last['return_mean']:.1f} ± {last['return_std']:.1f} "
        f"after {int(last['step'])} steps; run files in {result.run_dir}"
    )
    objectives = [k.removeprefix("objective/") for k in last if k.startswith("objective/")]
    if objectives:
        returns = (f"{n} {last[f'objective/{n}']:.2f} ({last[f'objective_discounted/{n}']:.2f})" for n in objectives)
        console.print("objective returns (discounted): " + ", ".join(returns))
    if result.loop is not None:
        from heron.advisor import advise_loop, flag_line

        line = flag_line(advise_loop(result.loop))
        if line is not None:
            console.print(f"{line} (margins: `heron inspect {result.run_dir}`)", soft_wrap=True, markup=False)


@app.command()
@_one_line_errors
def inspect(
    run_dir: Annotated[Path, typer.Argument(help="A run directory of `heron train` or `heron compare`.")],
    target_share: Annotated[
        float,
        typer.Option(help="Share of the pairs reaching a level that its suggested margin leaves to the levels below."),
    ] = 0.5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The ranking advisor: the share of pairs each level decides, flags, and margins that let every level speak."""
    from heron.advisor import inspect_run, render

    inspection = inspect_run(run_dir, target_share)
    if as_json:
        import json

        print(json.dumps(inspection.as_json(), indent=2))
        return
    render(inspection, console)


@app.command()
@_one_line_errors
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo's runs and plot go.")] = Path("runs/demo"),
    total_timesteps: Annotated[int, typer.Option(help="Env steps per method.", min=1)] = 50_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train heron, weighted-sum (equal weights) and ground-truth on Pendulum and compare them."""
    from rich.table import Table

    from heron.demo import DEMO_ENV, DEMO_METHODS, demo_ranking, run_demo

    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"out: {out} is not empty (pass --out to choose another directory)")
    console.print(
        f"[bold]heron demo[/]: PPO on {DEMO_ENV}, {total_timesteps} steps each, methods {', '.join(DEMO_METHODS)}"
    )
    rows, plot = run_demo(out, total_timesteps, seed, progress)
    table = Table(
        title=f"{DEMO_ENV}: final evaluation (ground-truth return; factor totals per episode, lower is better)"
    )
    table.add_column("method", no_wrap=True)
    table.add_column("return", justify="right", no_wrap=True)
    for name in rows[0].factors:
        table.add_column(name, justify="right")
    table.add_column("pair acc.", justify="right")
    table.add_column("wall-clock", justify="right")
    for row in rows:
        table.add_row(
            row.method,
            f"{row.final_return:.1f} ± {row.return_std:.1f}",
            *(f"{v:.1f}" for v in row.factors.values()),
            "-" if row.rm_accuracy is None else f"{row.rm_accuracy:.2f}",
            f"{row.wall_clock_s:.1f} s",
        )
    _print_wide(table)
    learned = next((row for row in rows if row.decided), None)
    if learned is not None:
        shares = ", ".join(f"{name} {share:.0%}" for name, share in learned.decided.items())
        console.print(
            f"{learned.method}'s ranking: {demo_ranking()}; pairs decided per level at the last refit: {shares}"
        )
    console.print(f"plot: {plot}")


@app.command()
@_one_line_errors
def compare(
    config: Annotated[Path, typer.Argument(help="YAML run config (may add `variants` and `threshold`).")],
    methods: Annotated[
        str,
        typer.Option(
            help="Comma-separated: heron, ground-truth, weighted-sum, flat-preference, "
            "heron-noiseP, heron-swap, or variants of the config."
        ),
    ] = "heron,ground-truth,weighted-sum,flat-preference",
    seeds: Annotated[int, typer.Option(help="Seeds 0..N-1 per method.", min=1)] = 5,
    out: Annotated[Path, typer.Option(help="Sweep directory (completed runs in it are skipped).")] = Path(
        "runs/compare"
    ),
    backend: Annotated[str, typer.Option(help="local (process pool) or ray.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: a local Ray instance).")] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Ray: where trials' checkpoints and metrics go and the sweep resumes from; a path or a URI "
            "pyarrow opens (file://, s3://, gs://). Default OUT/ray."
        ),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Local processes (default: the cores).", min=1)] = None,
    threshold: Annotated[float | None, typer.Option(help="Return for the steps-to-threshold column.")] = None,
    progress: Annotated[bool, typer.Option(help="Show overall progress.")] = True,
) -> None:
    """Run every (method, seed) of a config and write summary.csv, summary.md and plots."""
    from heron.experiments.runner import compare as run_compare

    names = [m.strip() for m in methods.split(",") if m.strip()]
    result = run_compare(
        config,
        names,
        seeds,
        out,
        backend=backend,
        address=address,
        storage=storage,
        workers=workers,
        threshold=threshold,
        progress=progress,
    )
    console.print((result.out / "summary.md").read_text())
    failed = [o for o in result.outcomes if o.status == "failed"]
    for o in failed:
        print(f"failed: {o.method} seed {o.seed}: {o.message}", file=sys.stderr)
    console.print(f"summary, plots and runs in {result.out}")
    if failed:
        raise typer.Exit(1)


@app.command()
def envs(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
) -> None:
    """List the registered factorized environments, their factors and default rankings."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from heron.envs import REGISTRY

    if as_json:
        rows = [info.as_json() | {"extra": info.extra, "installed": info.installed} for info in REGISTRY.values()]
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="factorized environments")
    table.add_column("id", no_wrap=True)
    table.add_column("factors")
    table.add_column("default ranking (most important first)")
    table.add_column("description")
    table.add_column("installed", no_wrap=True)
    for info in REGISTRY.values():
        ranking = " > ".join(
            f"{f.name} ({f.direction}{'' if f.margin == 0 else f', margin {f.margin:g} {f.margin_mode}'})"
            for f in info.hierarchy.factors
        )
        installed = "yes" if info.installed else escape(f"needs heron-rl[{info.extra}]")
        table.add_row(info.id, ", ".join(info.factors), ranking, info.description, installed)
    _print_wide(table)


def _print_wide(table: Table) -> None:
    """Print a table at least 120 columns wide, even when the output is not a terminal."""
    Console(width=max(console.width, 120)).print(table)


from heron.lm.cli import lm_app  # noqa: E402  (its commands use the helpers above when they run)

app.add_typer(lm_app, name="lm")

from heron.code.cli import code_app  # noqa: E402  (same)

app.add_typer(code_app, name="code")


def main() -> None:
    app()
