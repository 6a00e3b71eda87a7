"""The ``robench`` command line (typer). User mistakes print one line and exit with code 2."""

from __future__ import annotations

import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

import robench
from robench.errors import Interrupted, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Adversarial-robustness benchmarking: attacks x defenses, "
                       "tidy leaderboards.")


@contextmanager
def _warnings_held() -> Iterator[None]:
    """Warnings given inside are shown once the block has succeeded: a command that fails
    prints its error as its only line."""
    with warnings.catch_warnings(record=True) as caught:
        yield
    for warning in caught:
        warnings.showwarning(warning.message, warning.category, warning.filename,
                             warning.lineno)


def _fail(err: UserError) -> None:
    typer.echo(f"robench: error: {err}", err=True)
    raise typer.Exit(code=2)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"robench {robench.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                                is_eager=True, help="Print the version.")] = False
          ) -> None:
    """robench: adversarial-robustness benchmarking harness."""


@app.command()
def run(
    suite: Annotated[Path, typer.Argument(help="Suite YAML file.")],
    data_dir: Annotated[str | None, typer.Option(
        help="Dataset root (holds MNIST/raw/...); default: suite data.root, "
             "$ROBENCH_DATA_DIR, else a user cache folder (downloads there).")] = None,
    out: Annotated[str | None, typer.Option(
        help="Results folder (default results/<name>).")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    eval_limit: Annotated[int | None, typer.Option(
        min=1, help="Evaluate on N random test images (data.split_seed).")] = None,
    epochs: Annotated[int | None, typer.Option(min=0, help="Override train.epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Run this one seed (replaces the suite's "
                                                  "seed/seeds).")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="Run these seeds, e.g. 0,1,2 (replaces the suite's seed/seeds).")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress bars or messages.")] = False,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Do not read or write the model cache.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Recompute everything (ignore cache and existing rows).")] = False,
    executor: Annotated[str, typer.Option(
        help="serial (one process, the default) | ray (tasks on a Ray cluster).")] = "serial",
    jobs: Annotated[int | None, typer.Option(
        help="CPUs of the local Ray cluster robench starts (default: all).")] = None,
    address: Annotated[str | None, typer.Option(
        help="Join this Ray cluster (HOST:PORT, ray://HOST:PORT or auto) instead of "
             "starting one; default $RAY_ADDRESS.")] = None,
    models_from: Annotated[str | None, typer.Option(
        help="Load the baseline and the cacheable defended models from this results folder's "
             "shipped model files instead of training them.")] = None,
    recompute: Annotated[bool, typer.Option(
        "--recompute", help="Train and attack from scratch (no model cache) into a new folder "
                            "(<out>-recompute-<UTC time>) and compare it with --out.")] = False,
    recompute_into: Annotated[str | None, typer.Option(
        help="With --recompute: the new folder (must be new or empty).")] = None,
    update: Annotated[bool, typer.Option(
        "--update", help="When --out holds a complete run of this suite, resume in it instead "
                         "of checking it: recompute the cells other code computed or that do "
                         "not verify, the earlier outputs set aside in previous-<time>/.")
    ] = False,
) -> None:
    """Run a suite: train, defend, attack, and write results.csv + leaderboard.

    When the results folder already holds a complete run of this suite, nothing is computed
    or written: its shipped models are verified (robench verify, default sample) or, without
    them, its tables are checked, in one line with the verdict's exit code; the line also
    counts the cells other code computed (stale: --recompute or --update recomputes them).

    Example: robench run suites/fgsm_lenet.yaml --data-dir ../shared/data
    (on a local Ray cluster: add --executor ray --jobs 4)
    """
    if device is not None and device not in ("auto", "cpu", "cuda"):
        _fail(UserError(f"unknown device {device!r}; use auto, cpu or cuda", where="--device"))
    try:
        data_dir, out = _start_paths(data_dir, out)
        _readable_suite(suite)
        from robench.leaderboard import to_markdown
        from robench.recompute import recompute as recompute_run
        from robench.runner import RunOptions, run_or_check

        opts = RunOptions(data_dir=data_dir, out=out, device=device, eval_limit=eval_limit,
                          epochs=epochs, seed=seed, seeds=seeds, quiet=quiet,
                          use_cache=not no_cache, force=force, executor=executor, jobs=jobs,
                          address=address, models_from=_models_from(models_from))
        if (recompute or recompute_into is not None) and models_from is not None:
            raise UserError("trains every model from scratch; it cannot load them from "
                            "--models-from", where="--recompute")
        if (recompute or recompute_into is not None) and update:
            raise UserError("recomputes into a new folder; --update recomputes in --out: "
                            "use one of them", where="--recompute")
        end = (recompute_run(suite, opts, recompute_into, echo=typer.echo)
               if recompute or recompute_into is not None
               else run_or_check(suite, opts, echo=typer.echo, update=update))
    except UserError as err:
        _fail(err)
    except Interrupted as stop:
        typer.echo(f"robench: {stop}", err=True)
        raise typer.Exit(code=130) from None
    except KeyboardInterrupt:  # outside the run (it says what it kept): before it or after it
        typer.echo("robench: interrupted; every result written is kept (run the same command "
                   "again to resume)", err=True)
        raise typer.Exit(code=130) from None
    if end.board is not None and not quiet:
        written = end.out_dir / "leaderboard.md"  # with its notes (subsets, adaptive attacks)
        typer.echo(written.read_text() if written.is_file() else to_markdown(end.board))
        typer.echo(f"results: {end.out_dir}")
    if end.line is not None:  # the verdict on a complete run, or the recompute's comparison
        typer.echo(end.line)
    if end.code:
        raise typer.Exit(code=end.code)


@app.command()
def plan(
    suite: Annotated[Path, typer.Argument(help="Suite YAML file.")],
    data_dir: Annotated[str | None, typer.Option(
        help="Dataset root, as for robench run.")] = None,
    out: Annotated[str | None, typer.Option(
        help="Results folder whose cells are checked (default results/<name>).")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    eval_limit: Annotated[int | None, typer.Option(
        min=1, help="Evaluate on N random test images (data.split_seed).")] = None,
    epochs: Annotated[int | None, typer.Option(min=0, help="Override train.epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Plan this one seed.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Plan these seeds, e.g. 0,1,2.")] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Plan a run that does not read the model cache.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Plan a run that recomputes everything.")] = False,
    no_calibrate: Annotated[bool, typer.Option(
        "--no-calibrate", help="Print the plan without timing the model (no times).")] = False,
    models_from: Annotated[str | None, typer.Option(
        help="Load the baseline and the cacheable defended models from this results folder's "
             "shipped model files instead of training them.")] = None,
) -> None:
    """Show what robench run would do: every cell (done or to do), which models are cached,
    and an estimated time per stage. Writes nothing and trains nothing.

    Takes the options of robench run with the same meaning. Times come from timing one batch
    of the suite's model on this machine (a few seconds) and are upper bounds.

    Example: robench plan suites/fgsm_lenet.yaml --data-dir ../shared/data
    """
    if device is not None and device not in ("auto", "cpu", "cuda"):
        _fail(UserError(f"unknown device {device!r}; use auto, cpu or cuda", where="--device"))
    try:
        data_dir, out = _start_paths(data_dir, out)
        _readable_suite(suite)
        from rich.console import Console

        from robench.preflight import preflight, render
        from robench.runner import RunOptions

        opts = RunOptions(data_dir=data_dir, out=out, device=device, eval_limit=eval_limit,
                          epochs=epochs, seed=seed, seeds=seeds, quiet=True,
                          use_cache=not no_cache, force=force,
                          models_from=_models_from(models_from))
        result = preflight(suite, opts, calibrated=not no_calibrate)
    except UserError as err:
        _fail(err)
    except KeyboardInterrupt:
        typer.echo("robench: interrupted", err=True)
        raise typer.Exit(code=130) from None
    render(result, Console(highlight=False, width=_width()))


def _readable_suite(suite: Path) -> None:
    """Refuse a suite file that is not bounded, readable YAML before torch and the plugins
    are imported (about 2 s): a one-line error at once. The run reads the file again, with
    the same checks, when it validates it."""
    from robench.suite_yaml import read_suite_file

    read_suite_file(suite)


def _start_paths(data_dir: str | None, out: str | None) -> tuple[str | None, str | None]:
    """``--data-dir`` and ``--out`` as absolute paths against the folder robench started in
    (``--out`` with its folder's links and ``..`` resolved), before a plugin is imported or a
    guard looks at them; empty values are left to the checks that name them."""
    from robench.outdir import resolve_out

    if data_dir is not None and data_dir.strip():
        data_dir = str(Path(data_dir).expanduser().absolute())
    if out is not None and out.strip():
        out = str(resolve_out(out))
    return data_dir, out


def _models_from(path: str | None) -> str | None:
    """``--models-from`` against the folder robench started in; an empty value is refused."""
    if path is None:
        return None
    if not path.strip():
        raise UserError("empty folder name", where="--models-from")
    return str(Path(path).expanduser().absolute())


def _width() -> int:
    """The terminal's width, or 140 columns when printing into a file or pipe (rich would use
    80 and fold the plan's tables)."""
    import shutil

    return max(shutil.get_terminal_size((140, 24)).columns, 100)


@app.command("list")
def list_plugins() -> None:
    """List every registered plugin (built-in and installed through entry points).

    Example: robench list
    """
    from robench.plugins import all_registries
    from robench.registry import describe

    for kind, registry in all_registries():
        typer.echo(f"{kind}:")
        for name, obj in registry.items():
            typer.echo(f"  {name:<22} {describe(obj)}")
        for name, reason in sorted(registry.broken.items()):
            typer.echo(f"  {name:<22} UNUSABLE: {reason}")


@app.command()
def leaderboard(
    results_csv: Annotated[Path, typer.Argument(help="A results folder or its results.csv, "
                                                     "written by robench run.")],
    out: Annotated[Path | None, typer.Option(help="Also write the leaderboard, checks, plots "
                                                "and report into this folder.")] = None,
    write: Annotated[bool, typer.Option(
        "--write", help="Also write them into the results' own folder.")] = False,
) -> None:
    """Print the leaderboard of a results.csv; writes nothing unless asked (--out or --write:
    the leaderboard with its checks, plots and report).

    The same finalize step as the end of ``robench run``, so the two never disagree.

    Example: robench leaderboard results/fgsm_lenet/results.csv
    """
    from robench.finalize import leaderboard_of, read_inputs
    from robench.leaderboard import board_markdown

    try:
        if out is not None and write:
            raise UserError("give --out or --write, not both", where="--write")
        if out is not None or write:
            board, inputs = _finalize(results_csv, out)
        else:
            from robench.outdir import resolve_out

            inputs = read_inputs(resolve_out(results_csv, where=str(results_csv)))
            board = leaderboard_of(inputs)
    except UserError as err:
        _fail(err)
    note = inputs.note
    typer.echo((f"**{note}**\n\n" if note else "")
               + board_markdown(board, inputs.results, inputs.report.run or None))


def _finalize(results: Path, out: Path | None):
    """The run's finalize step on a results folder or CSV, written into ``out`` (default: the
    results' own folder), which robench locks and writes only its own files into; returns the
    leaderboard and its inputs (``note``: the "unverified" mark; None: verified)."""
    from robench.finalize import finalize, read_inputs
    from robench.outdir import OutputFolder, resolve_out

    if out is not None and not str(out).strip():
        raise UserError("empty folder name", where="--out")
    # resolved before any check: 'OTHER/newsub/..' is OTHER, although newsub/ does not exist
    # (and every path shown is one without '..')
    results = resolve_out(results, where=str(results))
    out = None if out is None else resolve_out(out)
    # every input read and verified here: a bad, edited or blocking one stops before any
    # folder is created or locked
    inputs = read_inputs(results)
    folder = results if results.is_dir() else results.parent
    if out is not None and out.resolve() != folder.resolve() and (out / "results.csv").exists():
        raise UserError("holds another run's results.csv; write this leaderboard into an "
                        "empty folder", where=str(out))
    with OutputFolder.open(out if out is not None else folder) as target:
        inputs.check_unchanged()  # under the lock: a run that finished meanwhile is kept
        board = finalize(inputs, target)
    inputs.warn()  # after every guard: a refusal is the only line
    return board, inputs


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="Run A: a results folder or results.csv.")],
    b: Annotated[Path | None, typer.Argument(
        help="Run B (omit with --defenses).")] = None,
    defenses: Annotated[str | None, typer.Option(
        help="Compare two defenses of run A instead: 'X,Y' (B - A = Y - X).")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the markdown to this file.")] = None,
) -> None:
    """Compare two runs (or two defenses of one run): robust accuracy per cell in A and B,
    B - A, and with per-image outcomes a paired test and a 95 % interval per cell (one seed: exact
    McNemar; several: over seeds), Holm-adjusted over the rows.

    Example: robench compare results/fgsm_lenet results/fgsm_lenet-recompute-<time> --out diff.md;
    robench compare results/fgsm_lenet --defenses none,unlearning
    """
    from robench.compare import compare_defenses, compare_results
    from robench.outdir import atomic_write_text, resolve_out

    try:
        with _warnings_held():  # an unverified run's warning, once --out is written
            # resolved first: a guard must see the file 'RUN/newsub/../results.csv' really names
            target = None if out is None else resolve_out(out)
            if defenses is not None:
                names = [d.strip() for d in defenses.split(",")]
                if len(names) != 2 or not all(names) or b is not None:
                    raise UserError("give two defense names 'X,Y' and one run", where="--defenses")
                text = compare_defenses(a, names[0], names[1])
            elif b is None:
                raise UserError("give two runs, or one run and --defenses X,Y", where="compare")
            else:
                text = compare_results(a, b)
            if target is not None:
                try:
                    atomic_write_text(target, text)
                except OSError as err:
                    raise UserError(f"cannot write the comparison ({err.strerror})",
                                    where=str(target)) from None
    except UserError as err:
        _fail(err)
    typer.echo(text, nl=False)


@app.command()
def report(
    results_dir: Annotated[Path, typer.Argument(help="A results folder written by robench run.")],
) -> None:
    """Write report.md and a self-contained report.html (leaderboard, curves, checks, metrics).

    The same finalize step as the end of ``robench run`` (checks and leaderboard included).

    Example: robench report results/fgsm_lenet
    """
    try:
        _finalize(results_dir, None)
    except UserError as err:
        _fail(err)
    folder = results_dir if results_dir.is_dir() else results_dir.parent
    typer.echo(f"wrote {folder / 'report.md'} and {folder / 'report.html'}")


@app.command()
def verify(
    results_dir: Annotated[Path, typer.Argument(help="A results folder written by robench run "
                                                     "(with its shipped models).")],
    sample: Annotated[int | None, typer.Option(
        help="Images re-attacked per cell (default 50; at most the cell's images).")] = None,
    retrain: Annotated[bool, typer.Option(
        "--retrain", help="Also retrain the baseline and cacheable defenses and compare "
                          "weights and outcomes (takes as long as their training).")] = False,
    seed: Annotated[int, typer.Option(help="Draws the sample of images.")] = 0,
    data_dir: Annotated[str | None, typer.Option(
        help="Dataset root, as for robench run.")] = None,
) -> None:
    """Check a results folder against the models it ships, writing nothing: every number
    against the per-image outcomes, the leaderboard and checks against what finalize computes,
    each model's hash against its rows, and a seeded sample of every cell's images attacked
    again. Exit 0: verified; 1: differences (one line each); 2: bad input.

    Example: robench run suites/smoke.yaml; robench verify results/smoke --sample 50
    """
    from robench.verify_run import DEFAULT_SAMPLE, VerifyOptions
    from robench.verify_run import verify as verify_folder

    try:
        data_dir, _ = _start_paths(data_dir, None)
        opts = VerifyOptions(sample=DEFAULT_SAMPLE if sample is None else sample,
                             retrain=retrain, seed=seed, data_dir=data_dir)
        verdict = verify_folder(results_dir, opts, echo=typer.echo)
    except UserError as err:
        _fail(err)
    except KeyboardInterrupt:
        typer.echo("robench: interrupted; verify wrote nothing", err=True)
        raise typer.Exit(code=130) from None
    typer.echo(verdict.summary())
    raise typer.Exit(code=verdict.code)


cache_app = typer.Typer(no_args_is_help=True, help="The model cache (trained and defended "
                                                   "weights, keyed by settings and code).")
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info() -> None:
    """Print the cache folder, its number of entries and their size.

    Example: robench cache info
    """
    from robench.cache import ModelCache

    info = ModelCache().info()
    typer.echo(f"location: {info['location']}\nentries:  {info['entries']}\n"
               f"size:     {info['bytes'] / 2**20:.1f} MiB")


@cache_app.command("clear")
def cache_clear() -> None:
    """Delete every cached model (robench's own entry files only).

    Example: robench cache clear
    """
    from robench.cache import ModelCache

    cache = ModelCache()
    removed = cache.clear()
    typer.echo(f"removed {removed} entries from {cache.root}")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run like Ctrl-C: same line, same exit code


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: object = None, line: str | None = None) -> None:
    """robench's own warnings (e.g. an L2 eps outside the usual range) as one stderr line."""
    typer.echo(f"robench: warning: {message}", err=True)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    warnings.showwarning = _one_line_warning
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("robench: interrupted; run the same command again to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
