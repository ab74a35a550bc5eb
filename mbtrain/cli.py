"""The `mbtrain` command: a thin skin over the library.

Each command parses its options, calls one library function and prints the result.
Errors are converted here, once: a user's mistake is one `error: ...` line on stderr
and exit code 2; divergence exits 3; an interrupt exits 130.

    mbtrain fit configs/mnist.yaml --set train.epochs=5
    mbtrain eval runs/mnist-20261128-120000          # its checkpoints/best.npz
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Optional

import typer

from mbtrain import __version__

EXIT_CODES = ("Exit codes: 0 success; 1 a check failed (gradcheck) or an internal error; 2 bad input "
              "(usage, config, data, checkpoint, or a file that cannot be written); 3 training diverged "
              "(non-finite loss or gradient); 130 interrupted (a checkpoint was saved).")

# click's UsageError, wherever this typer keeps click (newer releases vendor it).
UsageError = typer.BadParameter.__mro__[1]

# NO_COLOR (https://no-color.org): plain click help, with no colour, bold or dim escapes
_PLAIN = {"rich_markup_mode": None} if os.environ.get("NO_COLOR") else {}

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help=f"Train multilayer perceptrons, vectorized over the minibatch.\n\n{EXIT_CODES}", **_PLAIN)

SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", help="Override a config key, e.g. --set train.lr=0.05 (repeatable; "
                                       "values are parsed as YAML).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
ThreadsOption = Annotated[Optional[int], typer.Option(
    "--threads", min=0, metavar="N", help="BLAS threads (0: the library's default; default: the "
                                          "checkpoint's train.threads), so parallel jobs do not oversubscribe cores.")]


def _version(value: bool):
    if value:
        typer.echo(f"mbtrain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False):
    pass


@app.command()
def fit(
    config: Annotated[Optional[str], typer.Argument(help="YAML config file (optional with --resume).")] = None,
    set_: SetOption = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Run directory (default runs/<config>-<UTC time>, "
                                               "made unique with -2, -3, ...).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Run directory runs/NAME instead of the "
                                                "default.")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", metavar="CKPT",
                                                  help="Continue from a checkpoint, in its run directory (a run "
                                                  "directory: its checkpoints/last.npz).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Empty an existing run directory given by "
                                            "--out/--name and start afresh.")] = False,
    json_: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or per-epoch lines.")] = False,
):
    """Train a network from a config; write config, metrics, checkpoints and summary to a run directory.

    The run directory's `status` file says running, completed, diverged, failed or interrupted.
    """
    from mbtrain import blas, checkpoint, runs
    from mbtrain.config import load_config
    from mbtrain.train import fit as fit_run
    from mbtrain.train import load_splits

    # every input is read and checked before anything is written, so a mistake leaves no trace
    if resume is not None:
        if name is not None or overwrite:
            raise UsageError("--resume continues its own run directory; it takes no --name or --overwrite")
        resume = checkpoint.resolve(resume, "resume")
        ckpt = checkpoint.load(resume)
        cfg = load_config(config, set_ or []) if config else load_config(None, set_ or [], ckpt.config.to_dict())
        _check_same_model(cfg, ckpt, resume)
        blas.check_library(cfg.train.blas)
        splits = load_splits(cfg, ckpt.normalization)
        run_dir = out or os.path.dirname(os.path.dirname(os.path.abspath(resume)))
        if runs.still_running(run_dir):
            raise UsageError(f"{run_dir}: another mbtrain fit is still running in this run directory")
        runs.makedirs(os.path.join(run_dir, "checkpoints"))
    else:
        if config is None:
            raise UsageError("missing argument CONFIG (or give --resume CKPT)")
        cfg = load_config(config, set_ or [])
        blas.check_library(cfg.train.blas)
        ckpt = None
        splits = load_splits(cfg)
        run_dir = runs.create(out, config, name=name, overwrite=overwrite)
    run = runs.Tracker(run_dir, sys.argv, config, set_ or [], resume, cfg.train.threads,
                       cfg.train.blas)
    try:
        with run:
            runs.write_text(run_dir, "config.yaml", cfg.to_yaml())
            if not quiet:
                print(f"run directory: {run_dir}", file=sys.stderr, flush=True)
            summary = fit_run(cfg, run_dir, resume=ckpt, quiet=quiet, splits=splits)
    finally:
        if json_ and run.status != "completed":     # scripts get an object on every exit path
            print(json.dumps({"run_dir": run_dir, "status": run.status, "exit_code": run.exit_code,
                              "error": run.error}), flush=True)
    if json_:
        print(json.dumps(summary))
    elif not quiet:
        _print_summary(summary)


def _check_same_model(cfg, ckpt, path) -> None:
    from mbtrain.errors import CheckpointError
    if cfg.model.layers != ckpt.config.model.layers or cfg.train.dtype != ckpt.config.train.dtype:
        raise CheckpointError(f"{path}: holds a {ckpt.config.model.layers} {ckpt.config.train.dtype} network, "
                              f"the config asks for {cfg.model.layers} {cfg.train.dtype}")
    if cfg.data.normalize != ckpt.config.data.normalize:     # the weights were fitted to that transform
        raise CheckpointError(f"{path}: was trained with data.normalize = {ckpt.config.data.normalize}, "
                              f"the config asks for {cfg.data.normalize}; resume with the same value")


def _print_summary(summary: dict) -> None:
    best = summary.get("best", {})
    line = f"done: {summary['epochs']} epochs, {summary['train_seconds']:.1f}s training"
    if best.get("val_acc") is not None:
        line += f", best val_acc {best['val_acc']:.4f} (epoch {best['epoch']})"
    if summary.get("test", {}).get("acc") is not None:
        line += f", test_acc {summary['test']['acc']:.4f}"
    elif "test" in summary:
        line += f", test_loss {summary['test']['loss']:.4f}"
    print(line, file=sys.stderr)


@app.command("eval")
def eval_(
    ckpt: Annotated[str, typer.Argument(help="Checkpoint .npz written by mbtrain fit, or a run directory (its "
                                        "checkpoints/best.npz).")],
    data: Annotated[Optional[str], typer.Option("--data", help="Data to evaluate on (default: the config's "
                                                "test split): IDX images, .npz, or a folder of x.npy/y.npy.")] = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Labels file for --data, when not found "
                                                  "beside it.")] = None,
    threads: ThreadsOption = None,
    json_: JsonOption = False,
):
    """Evaluate a checkpoint: loss, accuracy and per-class accuracy."""
    from mbtrain import blas, checkpoint
    from mbtrain import data as datamod
    from mbtrain.errors import MbtrainError
    from mbtrain.model import MLP
    from mbtrain.train import evaluate

    ckpt = checkpoint.resolve(ckpt)
    c = checkpoint.load(ckpt)
    cfg = c.config
    source = {"x": data, "y": labels} if labels else data
    if source is None:
        source = cfg.data.test
        if source is None:
            raise MbtrainError(f"{ckpt}: its config names no data.test; give --data PATH")
    dataset = datamod.load_for_checkpoint(c, source, "evaluation")
    with blas.limit(*blas.for_checkpoint(cfg.train, threads)):
        result = evaluate(MLP(c.params, cfg.model.activation, cfg.model.output), dataset, cfg.train.eval_batch_size)
    result = {"checkpoint": ckpt, "data": dataset.name, **result}
    if json_:
        print(json.dumps(result))
        return
    print(f"data      {dataset.name} ({result['n']} samples)")
    print(f"loss      {result['loss']:.4f}")
    if "r2" in result:                                     # regression: loss is the MSE
        print(f"mae       {result['mae']:.4f}")
        print(f"r2        {result['r2']:.4f}" if result["r2"] is not None else "r2        -")
        return
    print(f"accuracy  {result['acc']:.4f}")
    print("per class " + "  ".join(f"{i}:{a:.4f}" if a is not None else f"{i}:-"
                                   for i, a in enumerate(result["per_class_acc"])))


@app.command()
def gradcheck(
    config: Annotated[Optional[str], typer.Argument(help="YAML config file (optional with --checkpoint).")] = None,
    set_: SetOption = None,
    samples: Annotated[int, typer.Option("--samples", metavar="K", help="Training samples in the minibatch "
                                         "checked.")] = 8,
    ckpt: Annotated[Optional[str], typer.Option("--checkpoint", metavar="CKPT", help="Check these weights (a run "
                                                "directory: its checkpoints/best.npz) "
                                                "instead of a freshly initialized network.")] = None,
    fd_entries: Annotated[int, typer.Option("--fd-entries", metavar="N", help="Finite-difference entries per "
                                            "array; arrays with at most N entries are checked whole.")] = 64,
    json_: JsonOption = False,
):
    """Check backprop: vectorized dZ.T @ A_prev vs the per-sample loop vs finite differences, per layer.

    Exit 1 if any comparison is outside its tolerance (see docs/backprop.md).
    """
    from mbtrain import checkpoint
    from mbtrain import gradcheck as gc
    from mbtrain.config import load_config

    params = normalization = None
    if ckpt is not None:
        ckpt = checkpoint.resolve(ckpt)
        c = checkpoint.load(ckpt)
        cfg = load_config(config, set_ or []) if config else load_config(None, set_ or [], c.config.to_dict())
        _check_same_model(cfg, c, ckpt)
        params, normalization = c.params, c.normalization
    elif config is None:
        raise UsageError("missing argument CONFIG (or give --checkpoint CKPT)")
    else:
        cfg = load_config(config, set_ or [])
    report = gc.run(cfg, samples, params, fd_entries, normalization)
    print(json.dumps(report.to_dict()) if json_ else gc.format_report(report))
    if not report.passed:
        raise typer.Exit(1)


@app.command()
def predict(
    ckpt: Annotated[str, typer.Argument(help="Checkpoint .npz written by mbtrain fit, or a run directory (its "
                                        "checkpoints/best.npz).")],
    input: Annotated[str, typer.Argument(help="Samples to predict: IDX images, .npy, .npz (array x), a folder "
                                              "with x.npy, or CSV (features, optionally with the label column).")],
    out: Annotated[Optional[str], typer.Option("--out", help="Write to FILE (.csv or .npy) instead of CSV "
                                               "on stdout.")] = None,
    proba: Annotated[bool, typer.Option("--proba", help="Also give each class's probability (p0, p1, ...).")] = False,
    threads: ThreadsOption = None,
):
    """Predict the class (and with --proba the probabilities) of each sample of INPUT."""
    from mbtrain import blas, checkpoint
    from mbtrain import predict as predictmod

    c = checkpoint.load(checkpoint.resolve(ckpt))
    x = predictmod.read_inputs(input, c.config.model.layers[0], c.config.data)
    with blas.limit(*blas.for_checkpoint(c.config.train, threads)):
        columns, table = predictmod.predict(c, x, proba)
    if out is None:
        sys.stdout.write(predictmod.to_csv(columns, table))
    else:
        predictmod.write(out, columns, table)
        print(f"wrote {len(table)} predictions to {out}", file=sys.stderr)


@app.command("config")
def config_(
    config: Annotated[str, typer.Argument(help="YAML config file.")],
    set_: SetOption = None,
    json_: JsonOption = False,
):
    """Validate a config and print it resolved (defaults filled in, overrides applied) as YAML; trains nothing.

    Exit code 2 and one error line when the config or an override is bad, so a script can
    check a whole grid before launching it.
    """
    from mbtrain.config import load_config

    cfg = load_config(config, set_ or [])
    print(json.dumps(cfg.to_dict()) if json_ else cfg.to_yaml(), end="\n" if json_ else "")


@app.command()
def compare(
    run_dirs: Annotated[list[str], typer.Argument(metavar="RUN_DIR...", help="Run directories written by "
                                                  "mbtrain fit.")],
    sort: Annotated[Optional[str], typer.Option("--sort", metavar="KEY", help="Sort by a column, best "
                                                "first: *acc descending, others ascending, e.g. val_acc, "
                                                "val_loss, train.lr.")] = None,
    reverse: Annotated[bool, typer.Option("--reverse", help="Reverse the --sort order.")] = False,
    csv_: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    json_: JsonOption = False,
):
    """One row per run: its status, the settings that differ between the runs, final and best metrics.

    Missing or corrupt directories and failed, diverged or running runs keep their row, with
    the reason in the note column.
    """
    from mbtrain.compare import compare as compare_runs, to_csv, to_json, to_table

    if csv_ and json_:
        raise UsageError("give --csv or --json, not both")
    result = compare_runs(run_dirs, sort, reverse)
    text = to_json(result) + "\n" if json_ else to_csv(result) if csv_ else to_table(result)
    sys.stdout.write(text)


@app.command()
def plot(
    run_dirs: Annotated[list[str], typer.Argument(metavar="RUN_DIR...", help="Run directories written by "
                                                  "mbtrain fit.")],
    out: Annotated[str, typer.Option("--out", help="Image file to write (.png, .pdf or .svg).")] = "curves.png",
    metric: Annotated[Optional[str], typer.Option("--metric", metavar="KEY", help="Draw only this: loss or "
                                                  "acc (training and validation), or one metrics.csv column "
                                                  "(train_loss, val_acc, lr, ...). Default: loss and acc.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not report the file written.")] = False,
):
    """Draw training and validation curves of one or several runs into one image (needs matplotlib: the optional extra "plot")."""
    from mbtrain.plot import plot_runs

    empty = plot_runs(run_dirs, out, metric)
    if not quiet:
        for label in empty:
            print(f"note: {label} has no completed epoch yet", file=sys.stderr)
        print(f"wrote {out}", file=sys.stderr)


@app.command()
def bench(
    config: Annotated[str, typer.Argument(help="YAML config file: network, batch size, dtype, optimizer, data.")],
    set_: SetOption = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Steps per repeat (default: about "
                                                 "0.5 s of vectorized steps, at least 10); the per-sample loop runs a tenth.")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Repeats; rates are their median, ratios the "
                                         "median of each repeat's own ratio.")] = 9,
    json_: JsonOption = False,
):
    """Time the training step: vectorized vs a per-sample loop vs the GEMM-only bound; check gradients."""
    from mbtrain import bench as benchmod
    from mbtrain.config import load_config

    result = benchmod.run(load_config(config, set_ or []), steps=steps, repeats=repeats)
    print(json.dumps(result) if json_ else benchmod.table(result))
    if not result["gradients_match"]:
        print("error: vectorized and per-sample gradients differ", file=sys.stderr)
        raise typer.Exit(1)


data_app = typer.Typer(no_args_is_help=True, help="Inspect and convert data sources.")
app.add_typer(data_app, name="data")
LabelOption = Annotated[str, typer.Option("--label", help="CSV: the label column, by header name or 0-based "
                                                      "index (negative counts from the end).")]
HeaderOption = Annotated[str, typer.Option("--header", help="CSV: auto (a first line holding a non-number "
                                                        "is a header), yes or no.")]


def _column(label: str):
    return int(label) if label.lstrip("-").isdigit() else label


def _csv_header(header: str) -> str:
    if header not in ("auto", "yes", "no"):
        raise UsageError(f"--header {header!r}: expected auto, yes or no")
    return header


@data_app.command("info")
def data_info(
    path: Annotated[str, typer.Argument(help="IDX images (labels beside), .npz, folder of x.npy/y.npy, or .csv.")],
    label: LabelOption = "0",
    header: HeaderOption = "auto",
    json_: JsonOption = False,
):
    """Samples, feature shape, dtype, label histogram, min/max, and whether it trains memory-mapped."""
    from mbtrain import datainfo

    result = datainfo.info(path, _column(label), _csv_header(header))
    print(json.dumps(result) if json_ else datainfo.text(result))


@data_app.command("convert")
def data_convert(
    source: Annotated[str, typer.Argument(help="A CSV (.csv, .csv.gz), IDX images file or .npz to convert.")],
    out_dir: Annotated[str, typer.Argument(help="Folder to write x.npy and y.npy into (must not hold them).")],
    labels: Annotated[Optional[str], typer.Option("--labels", help="IDX: the labels file, when not beside "
                                                  "the images.")] = None,
    label: LabelOption = "0",
    header: HeaderOption = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="CSV: feature dtype of x.npy (float32, float64, "
                                       "uint8, ...).")] = "float32",
    label_dtype: Annotated[str, typer.Option("--label-dtype", help="CSV: dtype of y.npy: int64 for class "
                                             "labels, float32/float64 for regression targets.")] = "int64",
    json_: JsonOption = False,
):
    """Stream a CSV, IDX or .npz source into x.npy and y.npy, which training memory-maps."""
    import numpy as np

    from mbtrain import convert

    for option, value in (("--dtype", dtype), ("--label-dtype", label_dtype)):
        try:
            if np.dtype(value).kind not in "uif":
                raise TypeError
        except TypeError:
            raise UsageError(f"{option} {value!r}: expected a numeric dtype such as float32") from None
    result = convert.convert(source, out_dir, labels, _column(label), _csv_header(header), dtype, label_dtype)
    if json_:
        print(json.dumps(result))
    else:
        print(f"wrote {os.path.join(out_dir, 'x.npy')} {tuple(result['x']['shape'])} {result['x']['dtype']} "
              f"and y.npy {tuple(result['y']['shape'])} {result['y']['dtype']}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning every expected error into a message and an exit code."""
    from mbtrain.errors import Diverged, Interrupted, MbtrainError

    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="mbtrain", standalone_mode=False)
    except UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":            # bare `mbtrain`: show the help
            text = e.ctx.get_help() if e.ctx else ""       # newer typer has printed it already
            if text.strip():
                print(text, file=sys.stderr)
            sys.exit(2)
        hint = f" (see 'mbtrain {e.ctx.info_name} --help')" if e.ctx and e.ctx.info_name != "mbtrain" else ""
        print(f"error: {e.format_message()}{hint}", file=sys.stderr)
        code = 2
    except typer.Abort:
        print("error: interrupted", file=sys.stderr)
        code = 130
    except (MbtrainError, Diverged, Interrupted) as e:
        print(f"error: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        code = 0
    sys.exit(code if isinstance(code, int) else 0)
