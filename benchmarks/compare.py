"""One epoch of MNIST in mbtrain, PyTorch (CPU) and scikit-learn's MLPClassifier, alternated in one run.

Same network, batch size, initial weights (mbtrain's He init, copied into the others), plain
SGD with a constant learning rate, float32, ReLU, softmax cross-entropy. Each round trains
every framework for one epoch from those same weights, in alternating order; samples/s are
medians over the rounds, and each ratio the median over rounds of that round's own ratio (its
epochs ran back to back, so a slow stretch of a shared machine slows both sides alike). Frameworks that are not installed are skipped (neither is a
dependency of mbtrain). Timing covers the epoch's training steps only (batches from data
already in memory), not loading or evaluation; test accuracy after the epoch is the sanity check.

    python benchmarks/compare.py                         # settings A and B, 9 rounds
    python benchmarks/compare.py --settings A --rounds 5 --threads 1 --json

Threads: every framework of a setting gets the same number, by default its config's
train.threads (bench-a: 1, tiny products gain nothing from a second thread; bench-b: 0 = all
cores); --threads N sets it for all settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mbtrain import blas, data  # noqa: E402
from mbtrain.config import load_config  # noqa: E402
from mbtrain.train import build_model  # noqa: E402

SETTINGS = {"A": "configs/bench-a.yaml", "B": "configs/bench-b.yaml"}


def load_mnist(cfg):
    """(x_train float32 (60000, 784), y_train int64, x_test, y_test) scaled to [0, 1]."""
    out = []
    for source in (cfg.data.train, cfg.data.test):
        ds = data.load(os.path.join(ROOT, source), cfg.model.layers, "benchmark")
        out += [np.asarray(ds.x, dtype=np.float32) / np.float32(255), np.asarray(ds.y, dtype=np.int64)]
    return out


def run_mbtrain(config: str, threads: int, library: str) -> dict:
    """`mbtrain fit` itself, in a subprocess: its summary's train_seconds and test accuracy, and the
    library its products ran through (run.json)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "mbtrain", "fit", config, "--out", os.path.join(tmp, "run"),
               "--quiet", "--json", "--set", f"train.threads={threads}", "--set", f"train.blas={library}"]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"mbtrain fit failed: {out.stderr.strip()}")
        with open(os.path.join(tmp, "run", "run.json"), encoding="utf-8") as f:
            products = json.load(f)["blas"]["products"]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    return {"seconds": summary["train_seconds"], "test_acc": summary["test"]["acc"], "blas": products}


def run_torch(cfg, params, mnist, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads or os.cpu_count())
    x, y, xt, yt = (torch.from_numpy(a) for a in mnist)
    layers = []
    for l in range(len(params) // 2):
        linear = torch.nn.Linear(*params[2 * l].shape[::-1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(params[2 * l]))        # (m, n), like mbtrain's W
            linear.bias.copy_(torch.from_numpy(params[2 * l + 1]))
        layers += [linear, torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.SGD(net.parameters(), lr=cfg.train.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    K, generator = cfg.train.batch_size, torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    order = torch.randperm(len(x), generator=generator)
    for s in range(0, len(x), K):
        rows = order[s:s + K]
        opt.zero_grad(set_to_none=False)
        loss_fn(net(x[rows]), y[rows]).backward()
        opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        acc = float((net(xt).argmax(1) == yt).float().mean())
    return {"seconds": seconds, "test_acc": acc}


def run_sklearn(cfg, params, mnist, threads: int) -> dict:
    from sklearn.neural_network import MLPClassifier
    x, y, xt, yt = mnist
    clf = MLPClassifier(hidden_layer_sizes=tuple(cfg.model.layers[1:-1]), activation="relu", solver="sgd",
                        alpha=0.0, batch_size=cfg.train.batch_size, learning_rate="constant",
                        learning_rate_init=cfg.train.lr, momentum=0.0, nesterovs_momentum=False,
                        shuffle=True, random_state=cfg.seed)
    clf.partial_fit(x[:cfg.train.batch_size], y[:cfg.train.batch_size], classes=np.arange(10))
    clf.coefs_ = [params[2 * l].T.copy() for l in range(len(params) // 2)]   # sklearn keeps W.T
    clf.intercepts_ = [params[2 * l + 1].copy() for l in range(len(params) // 2)]
    del clf._optimizer                         # a fresh SGD over the new weight arrays
    with blas.limit(threads):
        start = time.perf_counter()
        clf.partial_fit(x, y)                  # one epoch of minibatch SGD
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "test_acc": float((clf.predict(xt) == yt).mean())}


def available() -> list[str]:
    names = ["mbtrain"]
    for name, module in (("pytorch", "torch"), ("sklearn", "sklearn")):
        try:
            __import__(module)
            names.append(name)
        except ImportError:
            print(f"note: {module} is not installed; skipping {name}", file=sys.stderr)
    return names


def compare(setting: str, rounds: int, threads: int | None, library: str = "auto") -> dict:
    config = os.path.join(ROOT, SETTINGS[setting])
    cfg = load_config(config)
    threads = cfg.train.threads if threads is None else threads
    params = build_model(cfg).params                 # the initial weights all frameworks start from
    mnist = load_mnist(cfg)
    frameworks = available()
    runners = {"mbtrain": lambda: run_mbtrain(config, threads, library),
               "pytorch": lambda: run_torch(cfg, [p.copy() for p in params], mnist, threads),
               "sklearn": lambda: run_sklearn(cfg, [p.copy() for p in params], mnist, threads)}
    results = {name: [] for name in frameworks}
    for r in range(rounds):
        for name in (frameworks if r % 2 == 0 else frameworks[::-1]):
            results[name].append(runners[name]())
            print(f"  {setting} round {r + 1} {name}: {60000 / results[name][-1]['seconds']:,.0f} samples/s, "
                  f"test_acc {results[name][-1]['test_acc']:.4f}", file=sys.stderr)
    rows = {}
    for name, runs in results.items():
        rows[name] = {"samples_per_second": statistics.median(60000 / r["seconds"] for r in runs),
                      "test_acc": statistics.median(r["test_acc"] for r in runs)}
    for name in frameworks[1:]:     # each round's own ratio (its epochs ran back to back), median over rounds
        rows["mbtrain"][f"over_{name}"] = statistics.median(
            b["seconds"] / a["seconds"] for a, b in zip(results["mbtrain"], results[name]))
    return {"setting": setting, "network": cfg.model.layers, "batch_size": cfg.train.batch_size,
            "rounds": rounds, "threads": threads, "mbtrain_blas": results["mbtrain"][0]["blas"], "frameworks": rows}


def table(result: dict) -> str:
    lines = [f"setting {result['setting']}: {'-'.join(map(str, result['network']))} ReLU, batch "
             f"{result['batch_size']}, float32, plain SGD; one epoch, median of {result['rounds']} rounds, "
             f"threads {result['threads'] or 'all cores'}; mbtrain's products through {result['mbtrain_blas']}",
             f"{'framework':10s} {'samples/s':>10s} {'test_acc':>9s}  mbtrain is"]
    for name, row in result["frameworks"].items():
        ratio = "" if name == "mbtrain" else f"{result['frameworks']['mbtrain'][f'over_{name}']:.2f}x"
        lines.append(f"{name:10s} {row['samples_per_second']:>10,.0f} {row['test_acc']:>9.4f}  {ratio}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="A,B", help="comma-separated: A, B")
    parser.add_argument("--rounds", type=int, default=9, help="epochs per framework; medians are reported")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS/torch threads for every setting (0 = all cores; default: the config's train.threads)")
    parser.add_argument("--blas", default="auto", choices=("auto", "numpy", "mkl"),
                        help="mbtrain's train.blas (default auto: mkl where the mkl package is installed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    results = [compare(s.strip().upper(), args.rounds, args.threads, args.blas) for s in args.settings.split(",")]
    print(json.dumps(results) if args.json else "\n\n".join(table(r) for r in results))


if __name__ == "__main__":
    main()
