"""Every catalogued bad input (tests/bad_inputs/cases.py) through the real CLI, as a subprocess.

Each must exit 2 with exactly one line on stderr, `error: ...` naming the file, key or value and
what is expected, print nothing on stdout, show no traceback, and leave the workspace (its
finished run directory, good data and config, and the case's own input files) byte-identical.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml

from bad_inputs.cases import CASES, GOOD

assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


def snapshot(folder: str) -> dict:
    """relative path -> file bytes (or None for a folder), for everything under `folder`."""
    tree = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            tree[os.path.relpath(os.path.join(root, d), folder)] = None
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                tree[os.path.relpath(os.path.join(root, f), folder)] = fh.read()
    return tree


def run_case(case, base: str, workspace: str):
    shutil.copytree(base, workspace)
    for name, content in case.files.items():
        path = os.path.join(workspace, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if callable(content):
            content = content(workspace)
        with open(path, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
    before = snapshot(workspace)
    proc = subprocess.run([sys.executable, "-m", "mbtrain", *case.argv], capture_output=True,
                          text=True, cwd=workspace, timeout=120)
    return proc, before, snapshot(workspace)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """case id -> (completed process, workspace before, workspace after), run 4 at a time."""
    root = tmp_path_factory.mktemp("bad_inputs")
    base = str(root / "base")
    os.makedirs(base)
    rng = np.random.default_rng(0)
    np.savez(os.path.join(base, "good.npz"), x=rng.uniform(0, 1, (120, 8)).astype(np.float32),
             y=rng.integers(0, 3, 120))
    with open(os.path.join(base, "good.yaml"), "w") as f:
        yaml.safe_dump(GOOD, f)
    done = subprocess.run([sys.executable, "-m", "mbtrain", "fit", "good.yaml", "--out", "run", "-q"],
                          capture_output=True, text=True, cwd=base, timeout=120)
    assert done.returncode == 0, done.stderr
    with ThreadPoolExecutor(4) as pool:
        futures = {c.id: pool.submit(run_case, c, base, str(root / c.id)) for c in CASES}
        return {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(results, case):
    proc, before, after = results[case.id]
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for piece in case.expect:
        assert piece in lines[0], f"{piece!r} not in {lines[0]!r}"
    assert proc.stdout == ""
    changed = sorted(k for k in set(before) | set(after) if before.get(k, 0) != after.get(k, 0))
    assert changed == [], f"the case changed {changed}"
