"""The README stays true: it opens with the two set-up commands and documents every config key."""

from __future__ import annotations

import os

from conftest import ROOT
from mbtrain.config import reference

README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def test_readme_opens_with_the_two_commands():
    lines = README.splitlines()
    block = lines[lines.index("```sh") + 1:lines.index("```sh") + 3]
    assert block == ["pip install . && mbtrain fit configs/mnist.yaml", "pip install -e '.[test]' && pytest"]
    assert os.path.exists(os.path.join(ROOT, "configs", "mnist.yaml"))


def test_every_config_key_is_in_the_reference_table():
    missing = [key for key, _, _ in reference() if f"| `{key}` |" not in README]
    assert not missing, f"README config reference lacks {missing}"


def test_ci_runs_the_readme_test_command():
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert "grep -m1 \"^pip install -e '.\\[test\\]'\" README.md" in ci
