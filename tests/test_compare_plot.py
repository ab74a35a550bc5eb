"""`mbtrain compare`, `mbtrain plot` and scripts/sweep.sh, through the real command.

The runs are made in-process (CliRunner, fast); the commands under test run as subprocesses.
Expected metrics are recomputed here from metrics.csv and summary.json with the csv module.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from conftest import ROOT
from mbtrain.cli import app
from test_runs_cli import main_in_process, mbtrain


def fit(tiny_config, out, *overrides) -> int:
    args = ["fit", tiny_config, "--out", str(out), "--quiet"]
    for o in overrides:
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    # the app raises mbtrain's errors; cli.main would turn them into these exit codes
    return getattr(result.exception, "exit_code", result.exit_code) if result.exception else result.exit_code


def metrics_rows(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def sweep_runs(tmp_path, tiny_config):
    """Run directories in every state compare must show: {label: path}."""
    d = {k: tmp_path / k for k in ("fast", "slow", "diverged", "failed", "running", "killed", "corrupt")}
    assert fit(tiny_config, d["fast"], "train.lr=0.5") == 0
    assert fit(tiny_config, d["slow"], "train.lr=0.05", "train.epochs=2") == 0
    assert fit(tiny_config, d["diverged"], "model.activation=identity", "train.lr=1000000.0") == 3
    assert fit(tiny_config, d["failed"], "data.drop_last=true", "train.batch_size=1000") == 2
    # a run still going (this test process is alive) and one whose process was killed
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for label, pid in (("running", os.getpid()), ("killed", int(done.stdout))):
        shutil.copytree(d["slow"], d[label])
        (d[label] / "status").write_text("running\n")
        info = json.loads((d[label] / "run.json").read_text())
        (d[label] / "run.json").write_text(json.dumps(dict(info, pid=pid, host=socket.gethostname())))
    d["corrupt"].mkdir()
    (d["corrupt"] / "config.yaml").write_text("model: [unclosed\n")
    (d["corrupt"] / "status").write_text("completed\n")
    d["missing"] = tmp_path / "no-such-run"
    return {k: str(v) for k, v in d.items()}


def test_compare_one_row_per_run_in_every_state(tmp_path, sweep_runs):
    r = mbtrain("compare", *sweep_runs.values(), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    rows = {row["run"]: row for row in result["runs"]}
    assert [row["run"] for row in result["runs"]] == list(sweep_runs.values())     # given order, none dropped
    status = {label: rows[path]["status"] for label, path in sweep_runs.items()}
    assert status == {"fast": "completed", "slow": "completed", "diverged": "diverged", "failed": "failed",
                      "running": "running", "killed": "running", "corrupt": "corrupt", "missing": "missing"}
    notes = {label: rows[path]["note"] for label, path in sweep_runs.items()}
    assert "diverged" in notes["diverged"] and "train.batch_size" in notes["failed"]
    assert notes["running"] == "" and "process is gone" in notes["killed"]
    assert "config.yaml" in notes["corrupt"] and "invalid YAML" in notes["corrupt"]
    assert notes["missing"] == "no such directory"
    # only the settings that differ, from the resolved configs
    assert {"train.lr", "train.epochs", "model.activation", "data.drop_last", "train.batch_size"} \
        <= set(result["settings"])
    assert "seed" not in result["settings"] and "model.layers" not in result["settings"]
    assert rows[sweep_runs["fast"]]["train.lr"] == 0.5 and rows[sweep_runs["slow"]]["train.lr"] == 0.05


def test_compare_final_and_best_metrics_match_the_run_files(tmp_path, sweep_runs):
    r = mbtrain("compare", sweep_runs["fast"], sweep_runs["slow"], "--json", cwd=tmp_path)
    for row in json.loads(r.stdout)["runs"]:
        written = metrics_rows(row["run"])
        last = written[-1]
        assert row["epochs"] == int(last["epoch"])
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert row[key] == float(last[key])
        best = min(written, key=lambda w: float(w["val_loss"]))
        assert row["best_epoch"] == int(best["epoch"]) and row["best_val_acc"] == float(best["val_acc"])
        summary = json.loads(open(os.path.join(row["run"], "summary.json")).read())
        assert row["test_acc"] == summary["test"]["acc"]


def test_compare_sort_csv_and_table(sweep_runs, capsys):
    runs = list(sweep_runs.values())

    def compare_json(*args):
        code, out, err = main_in_process(capsys, "compare", *runs, *args, "--json")
        assert code == 0, err
        return json.loads(out)

    accs = [row["val_acc"] for row in compare_json("--sort", "val_acc")["runs"]]
    have = [a for a in accs if a is not None]
    assert have == sorted(have, reverse=True) and accs[:len(have)] == have     # best first, blanks last
    losses = [row["train_loss"] for row in compare_json("--sort", "train_loss")["runs"]
              if row["train_loss"] is not None]
    assert losses == sorted(losses)
    rev = compare_json("--sort", "train_loss", "--reverse")["runs"]
    assert [row["train_loss"] for row in rev if row["train_loss"] is not None] == sorted(losses, reverse=True)

    code, out, _ = main_in_process(capsys, "compare", *runs, "--csv")
    table = list(csv.reader(io.StringIO(out)))
    assert code == 0 and table[0] == compare_json()["columns"] and [t[0] for t in table[1:]] == runs

    code, out, err = main_in_process(capsys, "compare", *runs)
    lines = out.splitlines()
    assert code == 0 and err == "" and lines[0].split()[:2] == ["run", "status"] and len(lines) == 1 + len(runs)
    for line, path in zip(lines[1:], runs):
        assert line.startswith(path)


def test_compare_bad_usage_exits_2(sweep_runs, capsys):
    code, out, err = main_in_process(capsys, "compare", sweep_runs["fast"], "--sort", "val_accuracy")
    assert code == 2 and "val_acc" in err and out == ""
    assert main_in_process(capsys, "compare", sweep_runs["fast"], "--csv", "--json")[0] == 2
    assert main_in_process(capsys, "compare")[0] == 2


def test_plot_writes_a_png(tmp_path, tiny_config, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread
    monkeypatch.chdir(tmp_path)
    assert fit(tiny_config, tmp_path / "a", "train.lr=0.5") == 0
    assert fit(tiny_config, tmp_path / "b", "train.lr=0.05") == 0
    code, _, err = main_in_process(capsys, "plot", "a", "b", "--out", "curves.png")
    assert code == 0 and err.strip() == "wrote curves.png", err
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    two_panels = imread(tmp_path / "curves.png")
    assert main_in_process(capsys, "plot", "a", "--out", "acc.png", "--metric", "val_acc")[0] == 0
    one_panel = imread(tmp_path / "acc.png")
    assert two_panels.shape[1] > one_panel.shape[1] > 0            # side-by-side panels are wider
    for bad in (["--metric", "accuracy"], ["--out", "x.jpeg"]):
        code, _, err = main_in_process(capsys, "plot", "a", *bad)
        assert code == 2 and err.startswith("error: ")
    code, _, err = main_in_process(capsys, "plot", "nope", "--out", "n.png")
    assert code == 2 and "nope" in err and not (tmp_path / "n.png").exists()


def test_plot_without_matplotlib_says_how_to_install(tmp_path, tiny_config):
    assert fit(tiny_config, tmp_path / "a") == 0
    hide = "import sys; sys.modules['matplotlib'] = None; from mbtrain.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", hide, "plot", "a"], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["error: mbtrain plot needs matplotlib, which is not installed: "
                                     "pip install 'mbtrain[plot]'"]
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("xargs") is None, reason="needs bash and xargs")
def test_sweep_keeps_going_past_a_failed_run_and_reports_it(tmp_path, tiny_config):
    env = dict(os.environ, PYTHONPATH=ROOT, MBTRAIN=f"{sys.executable} -m mbtrain", SWEEP_DIR="sw",
               LRS="0.5 1000000.0", BATCH_SIZES="16", JOBS="2")
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "sweep.sh"), tiny_config,
                        "--set", "model.activation=identity"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "FAILED sw/lr1000000.0-bs16: diverged" in r.stderr
    assert "1 of 2 runs did not complete" in r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].startswith("sw/lr0.5-bs16 ") and "completed" in lines[1]     # sorted by val_acc
    assert lines[2].startswith("sw/lr1000000.0-bs16 ") and "diverged" in lines[2]
    info = json.loads((tmp_path / "sw" / "lr0.5-bs16" / "run.json").read_text())
    assert info["blas"]["threads_limit"] == 1 and "train.threads=1" in info["overrides"]
    assert sorted(os.listdir(tmp_path / "sw")) == ["lr0.5-bs16", "lr1000000.0-bs16"]     # only runs
    assert "diverged" in (tmp_path / "sw" / "lr1000000.0-bs16" / "fit.log").read_text()
    # the same SWEEP_DIR again: refused before anything runs, nothing touched
    again = subprocess.run(["bash", os.path.join(ROOT, "scripts", "sweep.sh"), tiny_config], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "diverged" in (tmp_path / "sw" / "lr1000000.0-bs16" / "fit.log").read_text()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sweep_checks_the_whole_grid_before_running(tmp_path, tiny_config):
    env = dict(os.environ, PYTHONPATH=ROOT, MBTRAIN=f"{sys.executable} -m mbtrain", SWEEP_DIR="sw",
               LRS="0.5 -1", BATCH_SIZES="16")
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "sweep.sh"), tiny_config], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "lr=-1" in r.stderr and "train.lr" in r.stderr
    assert not (tmp_path / "sw").exists()
