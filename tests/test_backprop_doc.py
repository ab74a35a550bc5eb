"""docs/backprop.md stays true: its worked example is recomputed, its code pointers still point at the code."""

from __future__ import annotations

import ast
import os
import re

import numpy as np
import pytest

from conftest import ROOT
from mbtrain import gradcheck
from mbtrain.model import MLP

DOC = os.path.join(ROOT, "docs", "backprop.md")


def doc_text() -> str:
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def worked_example() -> tuple[dict[str, np.ndarray], str]:
    """Every `NAME = [...]` line in the text blocks of the worked-example section, and the section."""
    text = doc_text()
    section = text.split("## A worked example", 1)[1].split("\n## ", 1)[0]
    arrays = {}
    for block in re.findall(r"```text\n(.*?)```", section, re.S):
        for line in block.splitlines():
            match = re.match(r"(\w+) = ([^#]+?)\s*(#.*)?$", line)
            if match:
                arrays[match[1]] = np.array(ast.literal_eval(match[2]), dtype=np.float64)
    return arrays, section


def softmax(Z):
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def test_worked_example_numbers_are_recomputed():
    doc, section = worked_example()
    A_prev, W, b, Y = doc["A_prev"], doc["W"], doc["b"], doc["Y"]
    K = len(A_prev)
    assert (K, W.shape) == (2, (2, 3))                         # K = 2, a 3-2 layer
    lr = float(re.search(r"One SGD step with lr = ([\d.]+)", section)[1])
    Z = A_prev @ W.T + b
    P = softmax(Z)
    C_k = -np.log((P * Y).sum(axis=1))
    delta = P - Y
    outer_1, outer_2 = np.outer(delta[0], A_prev[0]), np.outer(delta[1], A_prev[1])
    dW = (outer_1 + outer_2) / K
    expected = {"Z": Z, "P": P, "C_k": C_k, "C": C_k.mean(), "delta": delta, "outer_1": outer_1,
                "outer_2": outer_2, "dZ": delta / K, "dW": dW, "db": delta.sum(axis=0) / K,
                "dA_prev": (delta / K) @ W, "W_next": W - lr * dW}
    assert set(doc) == set(expected) | {"A_prev", "W", "b", "Y"}
    for name, value in expected.items():
        # the doc rounds to 4 decimals
        assert np.allclose(doc[name], value, rtol=0, atol=5.0001e-5), f"docs/backprop.md: {name} = " \
            f"{doc[name].tolist()}, recomputed {np.round(value, 4).tolist()}"


def test_worked_example_matches_the_model_and_the_loop():
    doc, _ = worked_example()
    A_prev, W, b, Y = doc["A_prev"], doc["W"], doc["b"], doc["Y"]
    model = MLP([W.copy(), b.copy()], "relu", "softmax_cross_entropy")    # one layer: no hidden activation
    Z = model.forward(A_prev)
    loss = model.loss_and_backward(Y)
    assert np.allclose(Z, doc["Z"], atol=5e-5) and abs(loss - float(doc["C"])) <= 5.0001e-5
    assert np.allclose(model.grads[0], doc["dW"], rtol=0, atol=5.0001e-5)
    assert np.allclose(model.grads[1], doc["db"], rtol=0, atol=5.0001e-5)
    loop = gradcheck.loop_gradients(model, A_prev, Y, 0.0)
    assert np.allclose(loop[0], model.grads[0], rtol=1e-12, atol=0)     # the sum of outer products


POINTER = re.compile(r"\[`(mbtrain/[\w/]+\.py):(\d+)`\]\(\.\./([\w/.]+)#L(\d+)\) `([^`]+)`")


def test_code_pointers_point_at_the_quoted_code():
    pointers = POINTER.findall(doc_text())
    assert len(pointers) >= 10
    for path, line, link_path, link_line, snippet in pointers:
        assert (path, line) == (link_path, link_line), f"docs/backprop.md: link text {path}:{line} " \
                                                       f"and target {link_path}#L{link_line} differ"
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            lines = f.read().splitlines()
        n = int(line)
        if n <= len(lines) and snippet in lines[n - 1]:
            continue
        now = [i + 1 for i, text in enumerate(lines) if snippet in text]
        where = f"it is now at line {now}" if now else "no line holds it any more"
        pytest.fail(f"docs/backprop.md points at {path}:{n} for `{snippet}`, but {where}: "
                    f"update the pointer (both the text and the #L anchor)")
