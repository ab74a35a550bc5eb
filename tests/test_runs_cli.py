"""Run directories, status files and scriptable output, through the real `mbtrain` command.

Most tests start `python -m mbtrain` in a subprocess (cwd = tmp_path, so the default runs/
lands there); the in-process CliRunner is used where a test must fix the clock or inject a fault.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from conftest import ROOT
from mbtrain import runs
from mbtrain.cli import app

STAMP = re.compile(r"^tiny-\d{8}-\d{6}(-\d+)?$")


def mbtrain(*args, cwd, env=None, timeout=120):
    """Run `python -m mbtrain ARGS` and return the CompletedProcess (text stdout/stderr)."""
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "mbtrain", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def main_in_process(capsys, *args) -> tuple[int, str, str]:
    """Run mbtrain.cli.main(ARGS) in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from mbtrain.cli import main
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def status(run_dir) -> str:
    with open(os.path.join(run_dir, "status")) as f:
        return f.read().strip()


def run_json(run_dir) -> dict:
    with open(os.path.join(run_dir, "run.json")) as f:
        return json.load(f)


def run_dirs(root) -> list[str]:
    runs_root = os.path.join(root, "runs")
    return sorted(os.listdir(runs_root)) if os.path.isdir(runs_root) else []


# ---------------------------------------------------------------- run directories

def test_default_run_dir_records_command_overrides_versions_and_blas(tmp_path, tiny_config):
    r = mbtrain("fit", tiny_config, "--set", "train.epochs=2", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (name,) = run_dirs(tmp_path)
    assert STAMP.match(name)
    run_dir = tmp_path / "runs" / name
    assert status(run_dir) == "completed"
    info = run_json(run_dir)
    assert info["command"][1:] == ["fit", tiny_config, "--set", "train.epochs=2", "--json"]
    assert info["overrides"] == ["train.epochs=2"]
    assert info["config_file"] == tiny_config
    assert info["exit_code"] == 0 and info["status"] == "completed" and info["error"] is None
    import numpy
    assert info["versions"]["numpy"] == numpy.__version__
    assert info["versions"]["mbtrain"]
    assert "build" in info["blas"] and "thread_variables" in info["blas"]
    assert json.loads(r.stdout)["run_dir"] == os.path.join("runs", name)


def test_two_runs_started_in_the_same_second_get_two_directories(tmp_path, tiny_config):
    """Two processes, imports done, both call the real CLI main at the same instant."""
    start = int(time.time()) + 3 + 0.2      # a fixed wall-clock instant early in a second
    launcher = textwrap.dedent(f"""
        import sys, time
        import mbtrain.cli, mbtrain.train, mbtrain.runs   # import everything before waiting
        time.sleep(max(0.0, {start} - time.time()))
        sys.argv = ["mbtrain", "fit", {tiny_config!r}, "--quiet", "--json"]
        mbtrain.cli.main()
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", launcher], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    names = run_dirs(tmp_path)
    assert len(names) == 2
    assert sorted(json.loads(o)["run_dir"] for o, _ in outs) == [os.path.join("runs", n) for n in names]
    for n in names:
        assert status(tmp_path / "runs" / n) == "completed"
    started = {run_json(tmp_path / "runs" / n)["started_utc"] for n in names}
    if len(started) == 1:                 # the same second, as intended: base and base-2
        assert names[1] == names[0] + "-2"


def test_same_second_in_process_with_a_fixed_clock(tmp_path, tiny_config, monkeypatch):
    fixed = time.struct_time((2026, 1, 2, 3, 4, 5, 4, 2, 0))
    monkeypatch.setattr(runs.time, "gmtime", lambda *a: fixed)
    monkeypatch.chdir(tmp_path)
    for _ in range(3):
        result = CliRunner().invoke(app, ["fit", tiny_config, "--quiet"])
        assert result.exit_code == 0, result.output
    assert run_dirs(tmp_path) == ["tiny-20260102-030405", "tiny-20260102-030405-2", "tiny-20260102-030405-3"]


def test_existing_run_dir_is_never_reused_without_overwrite(tmp_path, tiny_config, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main_in_process(capsys, "fit", tiny_config, "--out", str(run), "-q")[0] == 0
    before = {f: (run / f).read_bytes() for f in ("config.yaml", "metrics.csv", "summary.json", "status")}
    code, _, err = main_in_process(capsys, "fit", tiny_config, "--out", str(run), "--set", "train.epochs=1")
    assert code == 2
    assert err.startswith("error: ") and "--overwrite" in err and len(err.splitlines()) == 1
    assert {f: (run / f).read_bytes() for f in before} == before      # nothing damaged

    code, _, err = main_in_process(capsys, "fit", tiny_config, "--out", str(run), "--set", "train.epochs=1",
                                   "--overwrite", "-q")
    assert code == 0, err
    assert (run / "metrics.csv").read_text().count("\n") == 2        # header + the one new epoch
    assert run_json(run)["overrides"] == ["train.epochs=1"]


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, tiny_config, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    code, _, err = main_in_process(capsys, "fit", tiny_config, "--out", str(folder), "--overwrite")
    assert code == 2 and "not a run directory" in err
    assert (folder / "notes.txt").read_text() == "keep me"


def test_name_puts_the_run_under_runs(tmp_path, tiny_config, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = main_in_process(capsys, "fit", tiny_config, "--name", "lr-test", "-q")
    assert code == 0, err
    assert status(tmp_path / "runs" / "lr-test") == "completed"
    code, _, err = main_in_process(capsys, "fit", tiny_config, "--name", "lr-test")
    assert code == 2 and "not empty" in err
    for bad in (["--name", "a/b"], ["--name", "x", "--out", str(tmp_path / "y")]):
        code, _, err = main_in_process(capsys, "fit", tiny_config, *bad)
        assert code == 2 and err.startswith("error: "), err
    assert run_dirs(tmp_path) == ["lr-test"]


def test_resume_reuses_its_run_directory_and_keeps_the_record(tmp_path, tiny_config, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main_in_process(capsys, "fit", tiny_config, "--out", str(run), "-q", "--set", "train.epochs=1")[0] == 0
    code, _, err = main_in_process(capsys, "fit", "--resume", str(run / "checkpoints" / "last.npz"),
                                   "--set", "train.epochs=2", "-q")
    assert code == 0, err
    info = run_json(run)
    assert status(run) == "completed" and info["resumed_from"].endswith("last.npz")
    assert [e["overrides"] for e in info["earlier"]] == [["train.epochs=1"]]


# ---------------------------------------------------------------- status on every exit path

DIVERGING = ["--set", "model.activation=identity", "--set", "train.lr=1000000.0"]


def test_diverged_run_exits_3_with_status_and_json(tmp_path, tiny_config):
    r = mbtrain("fit", tiny_config, *DIVERGING, "--out", "d", "--json", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert status(tmp_path / "d") == "diverged"
    out = json.loads(r.stdout)
    assert out["status"] == "diverged" and out["exit_code"] == 3 and "diverged" in out["error"]
    assert run_json(tmp_path / "d")["exit_code"] == 3


def test_bad_input_after_the_run_dir_exists_is_failed_exit_2(tmp_path, tiny_config):
    # 200 training samples make no full batch of 1000 with drop_last: found once training starts
    r = mbtrain("fit", tiny_config, "--set", "data.drop_last=true", "--set", "train.batch_size=1000",
                "--out", "f", cwd=tmp_path)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "train.batch_size" in last
    assert "Traceback" not in r.stderr
    assert status(tmp_path / "f") == "failed"
    assert "train.batch_size" in run_json(tmp_path / "f")["error"]


def test_bad_data_creates_no_run_directory(tmp_path, tiny_config):
    r = mbtrain("fit", tiny_config, "--set", "data.train=missing.npz", cwd=tmp_path)
    assert r.returncode == 2 and "missing.npz" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_bad_config_creates_no_run_directory(tmp_path, tiny_config):
    r = mbtrain("fit", tiny_config, "--set", "train.lr=-1", cwd=tmp_path)
    assert r.returncode == 2 and "train.lr" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_unexpected_exception_marks_the_run_failed(tmp_path, tiny_config, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr("mbtrain.train.fit", boom)
    result = CliRunner().invoke(app, ["fit", tiny_config, "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, RuntimeError)
    assert status(tmp_path / "x") == "failed"
    info = run_json(tmp_path / "x")
    assert info["error"] == "boom" and info["exit_code"] == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_interrupts_with_status_and_exit_130(tmp_path, tiny_config, sig):
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "mbtrain", "fit", tiny_config, "--out", "i", "-q",
                          "--set", "train.epochs=100000"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "i" / "metrics.csv"
    deadline = time.monotonic() + 60
    while not metrics.exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert status(tmp_path / "i") == "running"
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert status(tmp_path / "i") == "interrupted"
    assert err.startswith("error: interrupted")


# ---------------------------------------------------------------- scriptable output

def test_stdout_is_empty_without_json_and_stderr_is_empty_with_quiet(tmp_path, tiny_config):
    r = mbtrain("fit", tiny_config, "--out", "a", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == ""
    assert "run directory: a" in r.stderr and "epoch 3/3" in r.stderr
    r = mbtrain("fit", tiny_config, "--out", "b", "--quiet", "--json", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    assert len(r.stdout.splitlines()) == 1 and json.loads(r.stdout)["status"] == "completed"


def test_eval_json_is_one_object(tmp_path, tiny_config, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main_in_process(capsys, "fit", tiny_config, "--out", "a", "-q")[0] == 0
    code, out, err = main_in_process(capsys, "eval", "a/checkpoints/last.npz", "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["n"] == 60 and 0.0 <= result["acc"] <= 1.0


def test_config_prints_the_resolved_yaml(tmp_path, tiny_config, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import yaml
    code, out, err = main_in_process(capsys, "config", tiny_config, "--set", "train.lr=0.3")
    assert code == 0 and err == ""
    resolved = yaml.safe_load(out)
    assert resolved["train"]["lr"] == 0.3                   # the override
    assert resolved["model"]["layers"] == [8, 16, 3]        # from the file
    assert resolved["train"]["eval_batch_size"] == 4096     # a default the file does not set
    assert not (tmp_path / "runs").exists()                 # nothing trained
    code, out, err = main_in_process(capsys, "config", tiny_config, "--json")
    assert json.loads(out)["train"]["lr"] == 0.5


@pytest.mark.parametrize("override, needle", [("train.lrr=0.3", "did you mean train.lr"),
                                              ("train.batch_size=0", "train.batch_size")])
def test_config_exits_2_on_a_bad_config(tiny_config, capsys, override, needle):
    code, out, err = main_in_process(capsys, "config", tiny_config, "--set", override)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1


def test_every_command_has_help_text():
    import typer

    def leaves(group, path):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):                   # a group such as `mbtrain data`
                yield from leaves(command, path + [name])
            yield path + [name], command

    commands = list(leaves(typer.main.get_command(app), []))
    assert len(commands) >= 5
    for path, command in commands:
        assert (command.help or "").strip(), f"mbtrain {' '.join(path)} has no help text"
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Usage" in result.output and path[-1] in result.output


def test_exit_codes_are_documented_in_help_and_readme():
    result = CliRunner().invoke(app, ["--help"])
    text = " ".join(result.output.split())
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("### Exit codes"):]
    for code, meaning in [("0", "success"), ("1", "check failed"), ("2", "bad input"), ("3", "diverged"),
                          ("130", "interrupted")]:
        assert f"{code} " in text and meaning in text, (code, text)
        assert re.search(rf"^\| {code} \|", section, re.M), code


def _pty_output(args, env_extra):
    """Run mbtrain in a pseudo-terminal (where colour would be used) and return its output."""
    pty = pytest.importorskip("pty")
    env = dict(os.environ, PYTHONPATH=ROOT, TERM="xterm-256color", COLUMNS="100", **env_extra)
    if "NO_COLOR" not in env_extra:
        env.pop("NO_COLOR", None)
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "mbtrain", *args], stdin=slave, stdout=slave, stderr=slave,
                         env=env)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    p.wait(timeout=60)
    return out


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_no_color_removes_every_escape_sequence():
    coloured = _pty_output(["--help"], {})
    if b"\x1b[" not in coloured:
        pytest.skip("help is not styled on this terminal, nothing to remove")
    for args in (["--help"], ["fit", "--help"], ["compare", "--help"], ["data", "info", "--help"]):
        plain = _pty_output(args, {"NO_COLOR": "1"})
        assert b"Usage" in plain and b"\x1b[" not in plain, plain[:200]


def test_a_given_directory_is_claimed_exclusively(tmp_path):
    """Two runs given the same empty --out: the second to create `status` is refused."""
    from mbtrain.errors import MbtrainError
    target = tmp_path / "empty"
    target.mkdir()
    assert runs.create(str(target), None) == str(target)      # an existing empty dir is fine
    assert status(target) == "running"
    with pytest.raises(MbtrainError, match="taken by another run"):
        runs._claim(str(target))                                # as if it had raced past the emptiness check
    assert status(target) == "running"
