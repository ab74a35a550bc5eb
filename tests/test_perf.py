"""The hot path and `mbtrain bench`: per-sample reference gradients, float32 end to end, BLAS threads."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from test_runs_cli import main_in_process
from mbtrain import bench, blas, data, gemm, optim, prefetch
from mbtrain.config import load_config
from mbtrain.model import MLP, init_params
from mbtrain.train import build_model


def _one_batch(cfg, dtype=None):
    dtype = dtype or cfg.train.dtype
    train = data.load(cfg.data.train, cfg.model.layers, "training")
    batches = data.Batches(train, cfg.train.batch_size, False, dtype, cfg.model.layers[-1], cfg.seed)
    return next(batches.epoch(0))


@pytest.mark.parametrize("activation,output", [("relu", "softmax_cross_entropy"),
                                               ("sigmoid", "sigmoid_quadratic"),
                                               ("tanh", "sigmoid_cross_entropy")])
def test_per_sample_loop_gives_the_vectorized_gradients(tiny_config, activation, output):
    cfg = load_config(tiny_config, [f"model.activation={activation}", f"model.output={output}",
                                    "model.layers=[8,16,7,3]", "train.dtype=float64"])
    model = build_model(cfg)
    X, Y = _one_batch(cfg)
    model.forward(X)
    loss = model.loss_and_backward(Y)
    loss_ref, grads_ref = bench.per_sample_gradients(model, X, Y)
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    for g, ref in zip(model.grads, grads_ref):
        np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-12)
    # and the reference itself against a finite difference of the mean loss on one weight
    W = model.params[2]
    eps, (i, j) = 1e-6, (1, 2)
    W[i, j] += eps
    up = bench.per_sample_gradients(model, X, Y)[0]
    W[i, j] -= 2 * eps
    down = bench.per_sample_gradients(model, X, Y)[0]
    W[i, j] += eps
    assert grads_ref[2][i, j] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_per_sample_loop_with_dropout_masks_gives_the_vectorized_and_gradchecks_loop_gradients(tiny_config, activation):
    from mbtrain import dropout, gradcheck
    cfg = load_config(tiny_config, [f"model.activation={activation}", "model.layers=[8,16,7,3]",
                                    "train.dtype=float64"])
    model = build_model(cfg)
    X, Y = _one_batch(cfg)
    masks = dropout.masks(0, 0, 3, len(X), [16, 7], 0.5, np.float64)
    assert 0 < sum(int((m == 0).sum()) for m in masks) < sum(m.size for m in masks)
    model.forward(X, masks)
    loss = model.loss_and_backward(Y)
    loss_ref, grads_ref = bench.per_sample_gradients(model, X, Y, masks)
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    loop = gradcheck.loop_gradients(model, X, Y, 0.0, masks)          # the other, independent loop
    for g, ref, other in zip(model.grads, grads_ref, loop):
        np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(other, ref, rtol=1e-10, atol=1e-12)
    unmasked = bench.per_sample_gradients(model, X, Y)[1]              # the masks do change them
    assert not np.allclose(unmasked[0], grads_ref[0])


def test_bench_trains_through_dropout_masks_as_fit_does(tiny_config, monkeypatch):
    from mbtrain import dropout, step
    seen, drawn = [], []
    real_call, real_masks = step.TrainStep.__call__, dropout.masks

    def spy_call(self, X, Y, masks=None):
        seen.append(masks)
        return real_call(self, X, Y, masks)

    def spy_masks(*args, **kwargs):
        drawn.append(args[:3])
        return real_masks(*args, **kwargs)

    monkeypatch.setattr(step.TrainStep, "__call__", spy_call)
    monkeypatch.setattr(dropout, "masks", spy_masks)
    cfg = load_config(tiny_config, ["model.dropout=0.5", "train.threads=1"])
    r = bench.run(cfg, steps=2, repeats=1)
    assert r["dropout"] == 0.5 and r["gradients_match"] is True
    assert seen and all(m is not None and len(m) == 1 and m[0].shape == (16, 16) for m in seen)
    assert {(cfg.seed, 0, 0), (cfg.seed, 0, 1)} <= set(drawn)      # (seed, epoch, step), as fit draws them
    assert "dropout 0.5" in bench.table(r)
    seen.clear()
    r = bench.run(load_config(tiny_config, ["train.threads=1"]), steps=2, repeats=1)
    assert r["dropout"] == 0 and seen and all(m is None for m in seen)
    assert ", 1 thread" in bench.table(r) and "1 threads" not in bench.table(r)


def test_flops_count_three_products_per_layer_but_the_first():
    # 784-100-10, K=64: layer 1 has 2 products of 2*64*784*100, layer 2 has 3 of 2*64*100*10
    assert bench.flops_per_step([784, 100, 10], 64) == 2 * (2 * 64 * 784 * 100) + 3 * (2 * 64 * 100 * 10)


def _arrays(obj, seen=None, path="", depth=0):
    """(path, array) for every ndarray reachable through attributes, lists, tuples and dicts."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 4:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _arrays(v, seen, f"{path}[{k!r}]", depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _arrays(v, seen, f"{path}[{i}]", depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for k, v in vars(obj).items():
            yield from _arrays(v, seen, f"{path}.{k}", depth + 1)


@pytest.mark.parametrize("overrides", [[], ["train.momentum=0", "train.weight_decay=0.01"],
                                       ["model.activation=sigmoid", "model.output=sigmoid_quadratic"]])
def test_float32_training_step_has_no_float64_array(tiny_config, overrides):
    cfg = load_config(tiny_config, ["train.dtype=float32", "train.weight_decay=0.001"] + overrides)
    model = build_model(cfg)
    opt = optim.make(cfg.train, model.params)
    X, Y = _one_batch(cfg)
    opt.lr = 0.1                                   # a Python float, as the schedule sets it
    for _ in range(2):
        Z = model.forward(X)
        loss = model.loss_and_backward(Y)
        opt.step(model.grads)
    assert isinstance(loss, float)
    found = dict(_arrays(model, path="model")) | dict(_arrays(opt, path="opt"))
    found |= {"X": X, "Y": Y, "Z": Z}
    assert len(found) > 10                         # buffers, grads, params and optimizer state were seen
    floats = {p: a.dtype for p, a in found.items() if a.dtype.kind == "f"}
    assert floats and all(d == np.float32 for d in floats.values()), \
        {p: d for p, d in floats.items() if d != np.float32}


def test_bench_json_reports_every_field(tiny_config):
    out = subprocess.run([sys.executable, "-m", "mbtrain", "bench", tiny_config, "--steps", "3",
                          "--repeats", "3", "--set", "train.threads=1", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["network"] == [8, 16, 3] and r["batch_size"] == 16 and r["dtype"] == "float32"
    for name in ("vectorized", "per_sample", "gemm_bound"):
        assert r[name]["samples_per_second"] > 0 and r[name]["step_ms"] > 0
    ms = r["repeat_step_ms"]                       # ratios: the median of each repeat's own ratio
    assert all(len(ms[name]) == 3 for name in ("vectorized", "per_sample", "gemm_bound"))
    paired = lambda a, b: statistics.median(x / y for x, y in zip(ms[a], ms[b]))
    assert r["speedup_over_per_sample"] == pytest.approx(paired("per_sample", "vectorized"))
    assert r["vectorized_over_gemm_bound"] == pytest.approx(paired("gemm_bound", "vectorized"))
    for name, (slow, fast) in {"speedup_over_per_sample": ("per_sample", "vectorized"),
                               "vectorized_over_gemm_bound": ("gemm_bound", "vectorized")}.items():
        assert r["repeat_ratios"][name] == pytest.approx([x / y for x, y in zip(ms[slow], ms[fast])])
        assert r[name] == pytest.approx(statistics.median(r["repeat_ratios"][name]))
        low, high = min(r["repeat_ratios"][name]), max(r["repeat_ratios"][name])
        spec = ".1f" if name == "speedup_over_per_sample" else ".2f"
        assert f"(repeats {low:{spec}}-{high:{spec}})" in bench.table(r)
    assert r["vectorized"]["step_ms"] == pytest.approx(statistics.median(ms["vectorized"]))
    assert r["gradients_match"] is True and r["gradient_max_relative_difference"] <= 1e-4
    assert r["flops_per_step"] == bench.flops_per_step([8, 16, 3], 16)
    assert r["gflops"] == pytest.approx(r["flops_per_step"] / r["vectorized"]["step_ms"] / 1e6)
    assert r["peak_rss_mb"] > 1
    assert set(r["blas"]) == {"library", "version", "threads", "architecture"}
    assert r["blas"]["threads"] in (1, None) and r["threads"] == 1
    assert r["steps"] == 3 and r["per_sample_steps"] == 1 and r["repeats"] == 3
    worker = prefetch.worker("auto")                # as fit would prefetch: threads 1 leaves a CPU free
    assert r["prefetch"] == prefetch.enabled("auto", False, 1, 16 * 8 * 4, worker)
    assert r["prefetch_worker"] == (worker if r["prefetch"] else None)


def test_bench_table_and_bad_config(tiny_config, tmp_path):
    out = subprocess.run([sys.executable, "-m", "mbtrain", "bench", tiny_config, "--steps", "2",
                          "--repeats", "1"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    for word in ("vectorized", "per_sample", "gemm_bound", "GFLOP/s", "peak RSS", "gradients match"):
        assert word in out.stdout
    bad = subprocess.run([sys.executable, "-m", "mbtrain", "bench", tiny_config, "--set",
                          "train.threads=-1"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "train.threads" in bad.stderr and "Traceback" not in bad.stderr


def test_threads_limit_blas_inside_the_context_only():
    before = blas.info()["threads"]
    with blas.limit(1):
        assert blas.info()["threads"] == 1
    assert blas.info()["threads"] == before
    with blas.limit(0):                            # 0 leaves the default
        assert blas.info()["threads"] == before


def test_fit_runs_under_train_threads(tiny_config, tmp_path, monkeypatch):
    from mbtrain import train
    seen = []
    real_step = optim.SGD.step

    def spy(self, grads):
        seen.append(blas.info()["threads"])
        return real_step(self, grads)

    monkeypatch.setattr(optim.SGD, "step", spy)
    cfg = load_config(tiny_config, ["train.threads=1", "train.epochs=1"])
    from mbtrain import runs
    train.fit(cfg, runs.create(str(tmp_path / "run"), None), quiet=True)
    assert seen and set(seen) == {1}


def test_eval_and_predict_run_under_the_checkpoints_threads_or_threads_option(tiny_config, tiny_data,
                                                                              tmp_path, monkeypatch, capsys):
    from mbtrain import predict, runs, train
    default = blas.info()["threads"]
    ckpts = {}
    for threads in (0, 1):                         # numpy's BLAS, so blas.info() reads the same library
        cfg = load_config(tiny_config, [f"train.threads={threads}", "train.epochs=1", "train.blas=numpy"])
        train.fit(cfg, runs.create(str(tmp_path / f"run{threads}"), None), quiet=True)
        ckpts[threads] = str(tmp_path / f"run{threads}" / "checkpoints" / "last.npz")
    seen = []

    def spy(real):
        def wrapped(*args, **kwargs):
            seen.append(blas.info()["threads"])
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(train, "evaluate", spy(train.evaluate))
    monkeypatch.setattr(predict, "predict", spy(predict.predict))
    x = str(tmp_path / "x.npy")
    np.save(x, np.load(tiny_data[1])["x"][:5])
    commands = {"eval": lambda ckpt: ["eval", ckpt], "predict": lambda ckpt: ["predict", ckpt, x]}
    for name, args in commands.items():
        seen.clear()
        assert main_in_process(capsys, *args(ckpts[1]))[0] == 0                       # the checkpoint's train.threads = 1
        assert main_in_process(capsys, *args(ckpts[0]))[0] == 0                       # 0: the library's default
        assert main_in_process(capsys, *args(ckpts[0]), "--threads", "1")[0] == 0     # the option over the checkpoint's
        assert seen == [1, default, 1], name
        assert blas.info()["threads"] == default                   # only while it runs
        code, _, err = main_in_process(capsys, *args(ckpts[0]), "--threads", "-1")
        assert code == 2 and err.startswith("error: ") and "--threads" in err and err.count("\n") == 1, err


def test_a_checkpoint_trained_with_mkl_is_evaluated_with_mkl_where_it_loads_else_numpys_blas():
    from types import SimpleNamespace
    assert blas.for_checkpoint(SimpleNamespace(threads=3, blas="mkl")) == (3, "auto")
    assert blas.for_checkpoint(SimpleNamespace(threads=3, blas="numpy"), threads=0) == (0, "numpy")
    assert blas.for_checkpoint(SimpleNamespace(threads=0, blas="auto"), threads=2) == (2, "auto")


def _traced_peak(fn) -> int:
    """Peak bytes traced (numpy reports its array buffers to tracemalloc) while fn runs."""
    import tracemalloc
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("overrides", [["train.momentum=0", "train.weight_decay=0"],
                                       ["train.momentum=0.9", "train.nesterov=true", "train.weight_decay=0.001"],
                                       ["train.momentum=0.9", "train.weight_decay=0"],
                                       ["train.optimizer=rmsprop", "train.momentum=0", "train.weight_decay=0.001"],
                                       ["train.optimizer=adam", "train.momentum=0"],
                                       ["train.optimizer=adamw", "train.momentum=0", "train.weight_decay=0.01"]])
def test_training_step_reuses_its_buffers(tiny_config, overrides):
    # the batch is 256 KB, a hidden layer's buffers 205 KB, W0 800 KB: a step that allocated an
    # array of any of these sizes would show; numpy's 32 KB iterator buffers and (K,) temporaries
    # (row maxima and sums in the loss) stay below the bound
    cfg = load_config(tiny_config, ["model.layers=[500,400,10]", "train.batch_size=128"] + overrides)
    model = build_model(cfg)
    opt = optim.make(cfg.train, model.params)
    rng = np.random.default_rng(0)
    X = rng.random((128, 500)).astype(np.float32)
    Y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 128)]

    def step():
        model.forward(X)
        model.loss_and_backward(Y)
        opt.step(model.grads)

    step()                                         # the first step allocates the buffers
    assert _traced_peak(step) < 64 * 1024
    assert _traced_peak(lambda: opt.step(model.grads)) < 4 * 1024


def test_compare_script_skips_frameworks_that_are_not_installed(monkeypatch, capsys):
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location("compare", os.path.join(ROOT, "benchmarks", "compare.py"))
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    monkeypatch.setitem(sys.modules, "torch", None)        # import torch now raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert compare.available() == ["mbtrain"]
    err = capsys.readouterr().err
    assert "torch is not installed" in err and "sklearn is not installed" in err


@pytest.mark.parametrize("name", ["bench-a.yaml", "bench-b.yaml", "mnist-fast.yaml"])
def test_performance_configs_are_valid(name):
    import os
    cfg = load_config(os.path.join(ROOT, "configs", name))
    assert cfg.train.dtype == "float32" and cfg.model.activation == "relu"
    if name.startswith("bench"):                   # the comparison's plain SGD, on all 60,000 images
        assert (cfg.train.momentum, cfg.train.weight_decay, cfg.train.schedule) == (0.0, 0.0, "constant")
        assert cfg.data.validation == 0 and cfg.train.epochs == 1


@pytest.mark.skipif(not gemm.available(np.float32), reason="numpy's BLAS gemm not found")
def test_gemm_bound_times_the_products_as_the_step_calls_them(monkeypatch):
    """The bound's forward products take the bias-in-product call on the layers where the model
    does (mbtrain.model.bias_in_product), numpy's matmul elsewhere; fused, every weight update
    is the gemm update the step makes."""
    layers = [20, 600, 12, 300]                     # W0 (600, 20) and W2 row-major and wide; W1 narrow
    model = MLP(init_params(layers, "he", "zeros", "relu", np.random.default_rng(0), np.float32), "relu",
                "softmax_cross_entropy")
    calls = []
    real = gemm.Product.__call__
    monkeypatch.setattr(gemm.Product, "__call__", lambda plan, *a, **k: calls.append((plan.name, plan.C.shape))
                        or real(plan, *a, **k))
    model.forward(np.ones((5, 20), np.float32))
    model.loss_and_errors(np.eye(300, dtype=np.float32)[:5])
    model.sgd_update(np.float32(0.1), model.layer_inputs())      # the fused step's updates
    by_model = [c for c in calls if c[0] == "forward"]
    assert by_model == [("forward", (5, 600)), ("forward", (5, 300))]
    assert [shape for name, shape in calls if name == "update"] == [(600, 20), (12, 600), (300, 12)]
    calls.clear()
    bench._Gemms(layers, 5, np.float32, np.random.default_rng(1), fused=True).run()
    added = [c for c in calls if c[0] == "forward"]
    updated = [shape for name, shape in calls if name == "update"]
    assert added == by_model
    assert updated == [(600, 20), (12, 600), (300, 12)]


def _fake_run(folder, a, b, nielsen, compare, fast, rss_kb):
    """A benchmarks/measure.sh output directory holding the given figures."""
    import json
    import os
    os.makedirs(folder)
    for kind, values, key in (("bench-a", a, "vectorized_over_gemm_bound"), ("bench-b", b, "vectorized_over_gemm_bound"),
                              ("nielsen", nielsen, "speedup_over_per_sample")):
        for i, v in enumerate(values, 1):
            with open(os.path.join(folder, f"{kind}-{i}.json"), "w") as f:
                json.dump({key: v}, f)
    (a_torch, a_sk), (b_torch, b_sk) = compare
    with open(os.path.join(folder, "compare.txt"), "w") as f:
        for name, torch, sk in (("A", a_torch, a_sk), ("B", b_torch, b_sk)):
            f.write(f"setting {name}: ...\nframework   samples/s  test_acc  mbtrain is\nmbtrain       1,000    0.93  \n"
                    f"pytorch         500    0.93  {torch:.2f}x\nsklearn         400    0.92  {sk:.2f}x\n\n")
    for i, (seconds, acc) in enumerate(fast, 1):
        with open(os.path.join(folder, f"fast-{i}.json"), "w") as f:
            f.write(json.dumps({"train_seconds": seconds, "test": {"acc": acc}}) + "\n")
    with open(os.path.join(folder, "mnist-time.txt"), "w") as f:
        f.write(f"\tMaximum resident set size (kbytes): {rss_kb}\n")


def test_summarize_counts_the_runs_that_meet_each_target(tmp_path, capsys):
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location("summarize", os.path.join(ROOT, "benchmarks", "summarize.py"))
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)
    _fake_run(tmp_path / "r1", [0.60, 0.72, 0.66], [0.91, 0.88, 0.93], [7.5, 8.5, 9.0], [(2.5, 1.9), (1.05, 1.4)],
              [(3.0, 0.9808), (6.0, 0.9808), (2.0, 0.97)], 160 * 1024)
    _fake_run(tmp_path / "r2", [0.80, 0.70, 0.50], [0.80, 0.95, 0.99], [8.0, 6.0, 7.0], [(1.5, 2.1), (1.2, 1.2)],
              [(4.0, 0.9810), (4.5, 0.9808), (5.0, 0.9808)], 300 * 1024)
    assert summarize.main([str(tmp_path / "r1"), str(tmp_path / "r2")]) == 0
    rows = {line.split(" | ")[0].lstrip("| "): line for line in capsys.readouterr().out.splitlines()}
    row = lambda start: next(v for k, v in rows.items() if k.startswith(start))
    assert "0.68 (0.50–0.80) | ≥ 0.70 | 3 of 6" in row("A (784")           # 0.70 meets >= 0.70
    assert "0.92 (0.80–0.99) | ≥ 0.90 | 4 of 6" in row("B (784")
    assert "7.75× (6.00×–9.00×) | ≥ 8× | 3 of 6" in row("Nielsen")
    assert "2.00× (1.50×–2.50×) | ≥ 2.0× | 1 of 2" in row("A: × PyTorch")
    assert "| 1 of 2 |" in row("A: × scikit-learn") and "| 1 of 2 |" in row("B: × PyTorch")
    assert "| 1 of 2 |" in row("B: × scikit-learn")                          # 1.2 < 1.3 <= 1.4
    assert "230 MB (160 MB–300 MB) | ≤ 250 MB | 1 of 2" in row("peak RSS")
    assert "4.75 s (3.00 s–under 98 %) | ≤ 5 s | 4 of 6" in row("`configs/mnist-fast")   # 6 s and 97 % miss
    assert summarize.main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
