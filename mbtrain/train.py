"""The training loop: data -> model -> forward, loss, backward, step -> metrics and checkpoints.

    mbtrain fit configs/mnist.yaml
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time

import numpy as np
from tqdm import tqdm

from mbtrain import (blas, checkpoint, data, dropout, monitor, normalize, optim, prefetch, runs, schedules,
                     step, tasks, testhook)
from mbtrain.config import Config
from mbtrain.errors import CheckpointError, DataError, Diverged, Interrupted
from mbtrain.model import MLP, init_params


def init_rng(seed: int) -> np.random.Generator:
    """The generator for weight init, derived from the seed (shuffling derives its own per epoch)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))


def build_model(cfg: Config) -> MLP:
    m = cfg.model
    params = init_params(m.layers, m.init, m.bias_init, m.activation, init_rng(cfg.seed), cfg.train.dtype)
    return MLP(params, m.activation, m.output)


def load_splits(cfg: Config, norm: normalize.Normalization | None = None):
    """(train, validation or None, test or None) Datasets, checked against the model's layers.

    All three get the data.normalize transform: `norm` when given (a resumed run's), else
    fitted on the training split in one streaming pass.
    """
    layers, d = cfg.model.layers, cfg.data
    regression = cfg.model.output == "identity_mse"
    full = data.load(d.train, layers, "training", d, regression=regression)
    train, val = full.split(d.validation)
    test = data.load(d.test, layers, "test", d, regression=regression) if d.test is not None else None
    if norm is None:
        norm = normalize.fit(train.x, train.start, train.stop, d.normalize, train.scale)
    for dataset in (train, val, test):
        if dataset is not None:
            dataset.normalization = norm
    return train, val, test


def make_batches(cfg: Config, train_set: data.Dataset, prefetch_setting: str | None = None,
                 drop_last: bool | None = None) -> data.Batches:
    """The training minibatches as the config's data section describes them."""
    d, t = cfg.data, cfg.train
    batch_bytes = t.batch_size * train_set.features * np.dtype(t.dtype).itemsize
    worker = prefetch.worker(d.prefetch_worker)
    return data.Batches(train_set, t.batch_size, d.drop_last if drop_last is None else drop_last, t.dtype,
                        cfg.model.layers[-1], cfg.seed, d.shuffle, d.block_rows, d.buffer_rows,
                        prefetch.enabled(prefetch_setting or d.prefetch, train_set.file_backed, t.threads,
                                         batch_bytes, worker), worker)


def evaluate(model: MLP, dataset: data.Dataset, batch_size: int) -> dict:
    """Mean loss, accuracy and per-class accuracy of `model` on `dataset`, in large batches.

    Multi-label and regression models get their own metrics (mbtrain.metrics).
    """
    classes = model.layers[-1]
    task = tasks.task_of(model.output_name, dataset.y, classes)
    if task == "regression":
        return tasks.evaluate_regression(model, dataset, batch_size)
    if task == "multilabel":
        return tasks.evaluate_multilabel(model, dataset, batch_size)
    total_loss, correct, n = 0.0, 0, 0
    class_total = np.zeros(classes, np.int64)
    class_correct = np.zeros(classes, np.int64)
    for X, Y in dataset.chunks(batch_size, model.dtype, classes):
        Z = model.logits(X)                                          # (K, m_L)
        total_loss += float(model.out.loss(Z, Y).sum())
        truth, guess = _labels(Y, logits=False), _labels(Z, logits=True)
        hit = truth == guess
        correct += int(hit.sum())
        n += len(X)
        np.add.at(class_total, truth, 1)
        np.add.at(class_correct, truth[hit], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = class_correct / class_total
    return {"loss": total_loss / n, "acc": correct / n, "n": n,
            "per_class_acc": [None if not math.isfinite(a) else float(a) for a in per_class]}


def _labels(scores: np.ndarray, logits: bool) -> np.ndarray:
    """Class index per row: argmax, or for a single sigmoid output z > 0 (targets: y >= 0.5)."""
    if scores.shape[1] == 1:
        return (scores[:, 0] > 0 if logits else scores[:, 0] >= 0.5).astype(np.int64)
    return scores.argmax(axis=1)


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps, so the saved state is whole."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:            # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@blas.with_config_threads
def fit(cfg: Config, run_dir: str, resume: checkpoint.Checkpoint | None = None,
        quiet: bool = False, log=None, splits=None) -> dict:
    """Train `cfg` writing into `run_dir`; returns the summary (also written to summary.json).

    `splits`: the (train, validation, test) of load_splits(cfg), when the caller already has them.
    With `resume`, continues exactly where that checkpoint stopped (weights, optimizer state,
    epoch, step within the epoch, running sums), so the result is bit-identical to a run that
    was never interrupted.
    """
    log = log or (lambda msg: None if quiet else print(msg, file=sys.stderr, flush=True))
    train_set, val_set, test_set = splits or load_splits(cfg, resume.normalization if resume else None)
    t = cfg.train
    run = _Run(cfg, run_dir, train_set, resume)
    state, steps = run.state, run.steps
    show_bar = not quiet and sys.stderr.isatty()
    wall_start = time.perf_counter()
    # overflow to inf/nan is caught by guard.check_step with a clear message, not numpy warnings
    with _StopFlag() as stop, np.errstate(over="ignore", invalid="ignore"):
        try:
            for epoch in range(state["epoch"], t.epochs):
                if state["stopped_early"]:              # resumed from a run that had stopped early
                    break
                epoch_start = time.perf_counter()
                lr_epoch = schedules.lr_at(t, epoch * steps, steps, state["lr_scale"])  # at the first step
                run.train_epoch(epoch, epoch_start, stop, show_bar)
                if run.end_epoch(epoch, epoch_start, lr_epoch, val_set, log):
                    break
        finally:
            run.batches.close()                         # a prefetching child process stops here
    if t.restore_best:
        _restore_best(run.model, run.ckpt_dir)
    return _summary(cfg, run_dir, run.model, state, run.metrics.rows, test_set, run.ckpt_dir,
                    time.perf_counter() - wall_start)


class _Run:
    """One fit's moving parts: model, optimizer, step, the loop's state, batches, metrics.csv, checkpoints.

    `state` holds plain values only (counters, running sums, monitor.INITIAL_STATE); every
    checkpoint saves it as its meta, and a resumed run starts from it.
    """

    def __init__(self, cfg: Config, run_dir: str, train_set: data.Dataset,
                 resume: checkpoint.Checkpoint | None):
        t, m = cfg.train, cfg.model
        self.cfg, self.train_set = cfg, train_set
        self.model = MLP(resume.params, m.activation, m.output) if resume else build_model(cfg)
        self.opt = optim.make(t, self.model.params, n_train=len(train_set))
        self.train_step = step.TrainStep(self.model, self.opt, t.clip_norm, t.fused_update,
                                         input_bound=train_set.entry_bound())
        self.masks = dropout.Masks(cfg.seed, self.model.layers[1:-1], m.dropout, self.model.dtype)   # by step
        self.state = {"epoch": 0, "epoch_step": 0, "step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0,
                      "seconds": 0.0, **monitor.INITIAL_STATE}
        if resume:
            _check_optimizer_state(resume, self.opt)
            self.opt.load_state(resume.optimizer)
            self.state.update({k: resume.meta[k] for k in self.state if k in resume.meta})
            self.opt.steps = self.state["step"]      # its state's flush follows the global step (optim._Flush)
        self.task = tasks.task_of(m.output, train_set.y, m.layers[-1])
        self.batches = make_batches(cfg, train_set)
        self.steps = self.batches.steps_per_epoch()
        if self.steps == 0:
            raise DataError(f"{train_set.name}: {len(train_set)} training samples make no full batch of "
                            f"train.batch_size = {t.batch_size} with data.drop_last = true")
        columns = runs.METRICS + (runs.REGRESSION_METRICS if self.task == "regression" else [])
        self.metrics = runs.MetricsLog(run_dir, self.state["epoch"], columns)
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        for folder in (run_dir, self.ckpt_dir):         # temp files left by a write that was SIGKILLed
            checkpoint.remove_stale_temp(folder)

    def save(self, name: str) -> None:
        """checkpoints/`name`: weights, optimizer state, config, the loop's state and normalization."""
        meta = dict(self.state, seed=self.cfg.seed)
        checkpoint.save(checkpoint.Checkpoint(self.model.params, self.opt.state(), self.cfg, meta,
                                              self.train_set.normalization),
                        os.path.join(self.ckpt_dir, name))

    def train_epoch(self, epoch: int, epoch_start: float, stop: _StopFlag, show_bar: bool) -> None:
        """The steps of `epoch` from state["epoch_step"] on; raises Diverged, or Interrupted on a signal."""
        cfg, t, state, model, opt, train_step = (self.cfg, self.cfg.train, self.state, self.model,
                                                 self.opt, self.train_step)
        task, steps, every = self.task, self.steps, cfg.checkpoint.every_steps
        bar = tqdm(total=steps, initial=state["epoch_step"], disable=not show_bar, leave=False,
                   file=sys.stderr, desc=f"epoch {epoch + 1}/{t.epochs}", mininterval=0.25)
        for X, Y in self.batches.epoch(epoch, state["epoch_step"]):
            opt.lr = schedules.lr_at(t, state["step"], steps, state["lr_scale"])
            masks = self.masks(epoch, state["epoch_step"], len(X))       # None without dropout
            try:
                loss = train_step(X, Y, masks)           # forward, backward, guard, update
            except Diverged as e:
                bar.close()
                raise _diverged(e, epoch, state, self.ckpt_dir) from None
            state["loss_sum"] += loss * len(X)
            state["correct"] += tasks.count_correct(model.Z[-1], Y, task)
            state["seen"] += len(X)
            state["step"] += 1
            state["epoch_step"] += 1
            testhook.at("step")
            if every and state["step"] % every == 0 and state["epoch_step"] < steps:
                self.save("last.npz")                  # mid-epoch; the epoch end saves in end_epoch
            if show_bar:
                bar.update(1)
                bar.set_postfix(step=state["step"], loss=f"{state['loss_sum'] / state['seen']:.4f}",
                                refresh=False)
            if stop.signal is not None:
                bar.close()
                state["seconds"] += time.perf_counter() - epoch_start
                self.save("last.npz")
                raise Interrupted(f"interrupted at epoch {epoch + 1}, step {state['epoch_step']}; "
                                  f"checkpoint saved to {os.path.join(self.ckpt_dir, 'last.npz')}")
        bar.close()

    def end_epoch(self, epoch: int, epoch_start: float, lr: float, val_set, log) -> bool:
        """Metrics row, monitor, then metrics.csv, best.npz, last.npz, log line; True: stop early."""
        t, state = self.cfg.train, self.state
        row = _epoch_row(self.model, state, epoch, lr, val_set, t.eval_batch_size, self.task)
        state["seconds"] += time.perf_counter() - epoch_start
        row["seconds"] = round(time.perf_counter() - epoch_start, 3)
        improved = monitor.end_epoch(state, row, t)
        # last.npz is the commit point: written last, so a kill before it re-runs this epoch
        # from the previous checkpoint (metrics.csv is truncated to its epochs on resume)
        self.metrics.append(row)
        if improved:
            self.save("best.npz")
        self.save("last.npz")
        testhook.at("epoch")
        log(_epoch_line(row, t.epochs))
        if state["stopped_early"]:
            log(f"early stopping: {t.monitor} has not improved for {state['stale_epochs']} epochs "
                f"(best: epoch {state['best_epoch']})")
        return state["stopped_early"]


def _diverged(e: Diverged, epoch: int, state: dict, ckpt_dir: str) -> Diverged:
    """The Diverged error with where it happened and which checkpoint is still good."""
    last = os.path.join(ckpt_dir, "last.npz")
    kept = (f"the last good checkpoint is kept: {last}" if os.path.exists(last)
            else "no checkpoint had been saved yet")
    return Diverged(f"training diverged at epoch {epoch + 1}, step {state['epoch_step'] + 1} "
                    f"(global step {state['step'] + 1}): {e}; {kept}")


def _check_optimizer_state(resume, opt) -> None:
    expected = {k: v.shape for k, v in opt.state().items()}
    found = {k: v.shape for k, v in resume.optimizer.items()}
    if expected != found:
        raise CheckpointError(f"optimizer state in the checkpoint ({sorted(found) or 'none'}) does not "
                              f"match the configured optimizer ({sorted(expected) or 'none'})")


def _epoch_row(model, state, epoch, lr, val_set, eval_batch_size, task) -> dict:
    """The epoch's metrics row; resets the running sums for the next epoch."""
    row = {"epoch": epoch + 1, "step": state["step"], "train_loss": state["loss_sum"] / state["seen"],
           "train_acc": state["correct"] / state["seen"] if task != "regression" else None, "lr": lr}
    if val_set is not None:
        v = evaluate(model, val_set, eval_batch_size)
        row["val_loss"], row["val_acc"] = v["loss"], v.get("acc")
        if task == "regression":
            row["val_mae"], row["val_r2"] = v["mae"], v["r2"]
    state.update(epoch=epoch + 1, epoch_step=0, loss_sum=0.0, correct=0, seen=0)
    return row


def _restore_best(model: MLP, ckpt_dir: str) -> None:
    """Put the best epoch's weights (best.npz) back into the model, for the final evaluation."""
    best_path = os.path.join(ckpt_dir, "best.npz")
    if os.path.exists(best_path):
        for p, b in zip(model.params, checkpoint.load(best_path).params):
            p[...] = b


def _epoch_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_mae", "val_r2"):
        if row.get(key) is not None:
            parts.append(f"{key} {row[key]:.4f}")
    parts += [f"lr {row['lr']:.4g}", f"time {row['seconds']:.1f}s"]
    return " ".join(parts)


def _summary(cfg, run_dir, model, state, rows, test_set, ckpt_dir, wall) -> dict:
    final = rows[-1] if rows else {}
    best_epoch = state["best_epoch"]
    best = next((r for r in rows if int(r["epoch"]) == best_epoch), {})
    summary = {
        "run_dir": run_dir, "status": "completed", "epochs": state["epoch"], "steps": state["step"],
        "stopped_early": state["stopped_early"], "restored_best": cfg.train.restore_best,
        "final": {k: _num(v) for k, v in final.items()},
        "best": {k: _num(v) for k, v in best.items()},
        "train_seconds": round(state["seconds"], 3),
        "samples_per_second": round(state["step"] * cfg.train.batch_size / max(state["seconds"], 1e-9), 1),
    }
    if test_set is not None:
        t = evaluate(model, test_set, cfg.train.eval_batch_size)
        summary["test"] = {"loss": t["loss"], "acc": t.get("acc"), "n": t["n"],
                           **{k: t[k] for k in ("mae", "r2") if k in t}}
        best_path = os.path.join(ckpt_dir, "best.npz")
        if os.path.exists(best_path):
            b = checkpoint.load(best_path)
            bt = evaluate(MLP(b.params, cfg.model.activation, cfg.model.output), test_set,
                          cfg.train.eval_batch_size)
            summary["best"]["test_loss"], summary["best"]["test_acc"] = bt["loss"], bt.get("acc")
    summary["wall_seconds"] = round(wall, 3)
    runs.write_json(run_dir, "summary.json", summary)
    return summary


def _num(v):
    if v in ("", None):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and not isinstance(v, float) and "." not in str(v) else f
