"""The CLI end to end on a tiny dataset: fit, eval of its checkpoint, resume, and each exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mbtrain import checkpoint
from mbtrain.config import load_config
from mbtrain.train import fit as fit_run


def mbtrain(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "mbtrain", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def test_fit_then_eval(tmp_path, tiny_config):
    out = tmp_path / "run"
    r = mbtrain("fit", tiny_config, "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)                                   # the one line on stdout
    assert r.stdout.count("\n") == 1
    assert summary["epochs"] == 3 and summary["test"]["acc"] > 0.8
    assert "epoch 3/3 train_loss" in r.stderr
    assert {"checkpoints", "config.yaml", "metrics.csv", "summary.json"} <= set(os.listdir(out))
    assert sorted(os.listdir(out / "checkpoints")) == ["best.npz", "last.npz"]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,step,train_loss,train_acc,val_loss,val_acc,lr,seconds" and len(rows) == 4
    assert load_config(str(out / "config.yaml")) == load_config(tiny_config)

    r = mbtrain("eval", str(out / "checkpoints" / "last.npz"), "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["n"] == 60 and ev["acc"] == pytest.approx(summary["test"]["acc"])
    assert len(ev["per_class_acc"]) == 3
    r = mbtrain("eval", str(out / "checkpoints" / "last.npz"))
    assert "accuracy" in r.stdout and "per class 0:" in r.stdout


def test_eval_on_other_data(tmp_path, tiny_config, tiny_data):
    out = tmp_path / "run"
    assert mbtrain("fit", tiny_config, "--out", str(out), "--quiet").returncode == 0
    r = mbtrain("eval", str(out / "checkpoints" / "best.npz"), "--data", tiny_data[0], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["n"] == 240


def test_a_run_directory_stands_for_its_checkpoint(tmp_path, tiny_config, tiny_data):
    """eval, predict and gradcheck take a run directory (or its checkpoints/ folder) for its best.npz,
    fit --resume for its last.npz; a directory holding neither is refused with one line, exit 2."""
    out = tmp_path / "run"
    assert mbtrain("fit", tiny_config, "--out", str(out), "--quiet", "--set", "train.epochs=2").returncode == 0
    best = json.loads(mbtrain("eval", str(out / "checkpoints" / "best.npz"), "--json").stdout)
    for given in (out, out / "checkpoints"):
        r = mbtrain("eval", str(given), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == dict(best, checkpoint=str(out / "checkpoints" / "best.npz"))
    x = str(tmp_path / "x.npy")
    np.save(x, np.load(tiny_data[1])["x"][:5])
    by_file, by_dir = (mbtrain("predict", str(c), x, "--proba") for c in (out / "checkpoints" / "best.npz", out))
    assert by_dir.returncode == 0 and by_dir.stdout == by_file.stdout and by_file.stdout.count("\n") == 6
    assert mbtrain("gradcheck", "--checkpoint", str(out), "--json").returncode == 0
    (out / "checkpoints" / "best.npz").unlink()                  # stopped in its first epoch: only last.npz
    r = mbtrain("eval", str(out), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["checkpoint"] == str(out / "checkpoints" / "last.npz")
    r = mbtrain("fit", "--resume", str(out), "--set", "train.epochs=3", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["epochs"] == 3
    assert [row.split(",")[0] for row in (out / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (["eval", str(empty)], ["fit", "--resume", str(empty)]):
        r = mbtrain(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert r.stderr.startswith(f"error: {empty}: is a directory without checkpoints/")
    assert not os.listdir(empty)


def test_default_run_dir_is_never_reused(tmp_path, tiny_config):
    for _ in range(2):
        assert mbtrain("fit", tiny_config, "--quiet", cwd=tmp_path).returncode == 0
    made = sorted(os.listdir(tmp_path / "runs"))
    assert len(made) == 2 and all(d.startswith("tiny-") for d in made)


def test_existing_run_dir_is_refused_untouched(tmp_path, tiny_config):
    out = tmp_path / "run"
    assert mbtrain("fit", tiny_config, "--out", str(out), "--quiet").returncode == 0
    before = {p: (out / p).read_bytes() for p in ("metrics.csv", "summary.json", "checkpoints/last.npz")}
    r = mbtrain("fit", tiny_config, "--out", str(out))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "already exists" in r.stderr
    assert {p: (out / p).read_bytes() for p in before} == before


def test_resume_continues_epochs_and_metrics(tmp_path, tiny_config):
    out = tmp_path / "run"
    assert mbtrain("fit", tiny_config, "--out", str(out), "--quiet", "--set", "train.epochs=2").returncode == 0
    r = mbtrain("fit", "--resume", str(out / "checkpoints" / "last.npz"), "--set", "train.epochs=3", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["epochs"] == 3
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]


@pytest.mark.parametrize("args,code,needle", [
    ([], 2, "Usage"),
    (["fit"], 2, "missing argument CONFIG"),
    (["fit", "nope.yaml"], 2, "nope.yaml: config file not found"),
    (["fit", "{cfg}", "--set", "train.lr"], 2, "expected KEY=VALUE"),
    (["fit", "{cfg}", "--set", "train.lr=-1"], 2, "train.lr = -1"),
    (["fit", "{cfg}", "--set", "model.layers=[9, 3]"], 2, "8 features"),
    (["fit", "{cfg}", "--bogus"], 2, "No such option"),
    (["eval", "nope.npz"], 2, "nope.npz: checkpoint not found"),
    (["frobnicate"], 2, "No such command"),
    (["fit", "{cfg}", "--set", "train.lr=1e6", "--set", "model.activation=identity"], 3, "diverged at epoch 1"),
])
def test_exit_codes_and_one_line_errors(tmp_path, tiny_config, args, code, needle):
    argv = [a.replace("{cfg}", tiny_config) for a in args]
    if argv[:1] == ["fit"] and len(argv) > 1:
        argv += ["--out", str(tmp_path / "r")]
    r = mbtrain(*argv)
    assert r.returncode == code, r.stderr
    assert needle in r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    if code in (2, 3) and args:
        assert r.stderr.strip().splitlines()[-1].startswith("error: ")
        assert len([l for l in r.stderr.splitlines() if l.startswith("error:")]) == 1


def test_divergence_keeps_last_good_checkpoint(tmp_path, tiny_config):
    out = tmp_path / "run"
    assert mbtrain("fit", tiny_config, "--out", str(out), "--quiet", "--set", "train.epochs=1").returncode == 0
    last = (out / "checkpoints" / "last.npz").read_bytes()
    r = mbtrain("fit", "--resume", str(out / "checkpoints" / "last.npz"), "--set", "train.epochs=2",
                "--set", "train.lr=1e6", "--set", "model.activation=identity")
    assert r.returncode == 3 and "diverged at epoch 2" in r.stderr
    assert (out / "checkpoints" / "last.npz").read_bytes() == last


def test_sigint_saves_checkpoint_and_exits_130(tmp_path, tiny_config):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mbtrain", "fit", tiny_config, "--out", str(out),
                             "--set", "train.epochs=100000", "--set", "train.batch_size=1"],
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    while "epoch 1/" not in line:
        line = proc.stderr.readline()
        assert line, "fit ended before its first epoch"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at epoch" in err and "Traceback" not in err
    ck = checkpoint.load(str(out / "checkpoints" / "last.npz"))
    assert ck.meta["epoch"] >= 1


def test_same_config_and_seed_give_bit_identical_weights(tmp_path, tiny_config):
    cfg = load_config(tiny_config)
    for name in ("a", "b"):
        os.makedirs(tmp_path / name / "checkpoints")
        fit_run(cfg, str(tmp_path / name), quiet=True)
    a = checkpoint.load(str(tmp_path / "a" / "checkpoints" / "last.npz"))
    b = checkpoint.load(str(tmp_path / "b" / "checkpoints" / "last.npz"))
    for x, y in zip(a.params + list(a.optimizer.values()), b.params + list(b.optimizer.values())):
        assert x.dtype == np.float32 and np.array_equal(x, y)
    other = load_config(tiny_config, ["seed=4"])
    os.makedirs(tmp_path / "c" / "checkpoints")
    fit_run(other, str(tmp_path / "c"), quiet=True)
    c = checkpoint.load(str(tmp_path / "c" / "checkpoints" / "last.npz"))
    assert not np.array_equal(a.params[0], c.params[0])


def test_python_dash_m_and_version():
    r = mbtrain("--version")
    assert r.returncode == 0 and r.stdout.startswith("mbtrain ")
