"""The typed config: YAML file, then `--set key.sub=value` overrides, validated before any work.

Each section is a dataclass whose fields carry their default, their allowed values and a
one-line meaning (the README's config reference is generated from the same place).

    mbtrain config configs/mnist.yaml --set train.lr=0.05
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from mbtrain.errors import ConfigError


def option(default, help: str, *, choices=None, min=None, max=None, min_exclusive=False,
           kind=None, nullable=False):
    """A config field with its default, meaning and allowed values."""
    meta = dict(help=help, choices=choices, min=min, max=max, min_exclusive=min_exclusive,
                kind=kind, nullable=nullable)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "identity")
OUTPUTS = ("softmax_cross_entropy", "sigmoid_cross_entropy", "sigmoid_quadratic", "identity_mse")
INITS = ("auto", "normal", "scaled_normal", "xavier", "xavier_normal", "he", "he_uniform")
OPTIMIZERS = ("sgd", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "step", "exponential", "cosine", "plateau")
MONITORS = ("val_loss", "val_acc")


@dataclass
class DataConfig:
    train: Any = option("data/mnist/train-images-idx3-ubyte.gz",
                        "training source: an IDX images file (labels found beside it), an .npz with "
                        "arrays x and y, a folder holding x.npy and y.npy, or a mapping {x: PATH, y: PATH}",
                        kind="source")
    test: Any = option(None, "test source, same forms as data.train; null for none",
                       kind="source", nullable=True)
    validation: Any = option(0.1, "validation split carved from the end of the training set: "
                                  "a count of samples (e.g. 10000) or a fraction in [0, 1)",
                             kind="split")
    drop_last: bool = option(False, "drop the last incomplete minibatch of each epoch")
    shuffle: str = option("full", "sample order per epoch, seeded: full = a permutation of all samples "
                                  "(each batch's rows sorted before reading); blocks = contiguous blocks "
                                  "in shuffled order, rows shuffled within data.buffer_rows; none = stored order",
                          choices=("full", "blocks", "none"))
    block_rows: int = option(4096, "rows per contiguous block for data.shuffle = blocks", min=1, max=2**40)
    buffer_rows: int = option(65536, "rows shuffled together for data.shuffle = blocks (whole blocks)",
                              min=1, max=2**40)
    prefetch: str = option("auto", "prepare the next batches in the background while the current one "
                                   "trains: auto = on when the process may use more than one CPU and either "
                                   "the training data is memory-mapped, or train.threads leaves a CPU free "
                                   "(and, for a thread worker, a batch holds 64 KiB or more)",
                           choices=("auto", "on", "off"), kind="switch")
    prefetch_worker: str = option("auto", "what prefetches: process = a forked child process filling shared "
                                          "memory (no GIL shared with the step), thread = a thread; auto and "
                                          "process give a process on Linux, a thread elsewhere",
                                  choices=("auto", "process", "thread"))
    check: bool = option(True, "scan every value before step 1 (labels in range, no NaN/Inf); false "
                               "skips the scan for trusted data (shapes and dtypes are always checked)")
    normalize: str = option("none", "feature transform fitted on the training split and stored in the "
                                    "checkpoint: unit = per-feature min/max to [0, 1]; standardize = "
                                    "per-feature zero mean, unit variance (uint8 pixels are first scaled "
                                    "by 1/255 in every mode)", choices=("none", "unit", "standardize"))
    csv_label: Any = option(0, "CSV sources: the label column, by header name or 0-based index "
                               "(negative counts from the end)", kind="column")
    csv_header: str = option("auto", "CSV sources: whether the first row names the columns; auto = yes "
                                     "when it holds a non-number", choices=("auto", "yes", "no"), kind="switch")


@dataclass
class ModelConfig:
    layers: list = option([784, 100, 10], "layer sizes from input to output, e.g. [784, 100, 10]",
                          kind="layers")
    activation: str = option("relu", "hidden-layer activation", choices=ACTIVATIONS)
    output: str = option("softmax_cross_entropy", "output activation and loss, fused; identity_mse is "
                                                  "regression (metrics MSE, MAE, R^2 instead of accuracy)",
                         choices=OUTPUTS)
    init: str = option("auto", "weight init: normal = N(0, 1); scaled_normal = N(0, 1/n_in); "
                               "xavier = Glorot uniform U(-a, a), a = sqrt(6/(n_in+n_out)); xavier_normal = "
                               "N(0, 2/(n_in+n_out)); he = N(0, 2/n_in); he_uniform = U(-a, a), a = "
                               "sqrt(6/n_in); auto = he for relu-like activations, xavier otherwise",
                       choices=INITS)
    bias_init: str = option("zeros", "bias init: zeros, or normal = N(0, 1)", choices=("zeros", "normal"))
    dropout: float = option(0.0, "inverted dropout: the fraction of each hidden layer's activations "
                                 "zeroed in training (survivors scaled by 1/(1-dropout)); off in evaluation",
                            min=0.0, max=0.99)


@dataclass
class TrainConfig:
    epochs: int = option(10, "passes over the training set", min=1, max=100_000)
    batch_size: int = option(32, "samples per minibatch (K)", min=1, max=10_000_000)
    lr: float = option(0.1, "learning rate (eta); the loss is averaged over the minibatch",
                       min=0.0, min_exclusive=True, max=1e6)
    optimizer: str = option("sgd", "update rule (see mbtrain/optim.py for each formula)", choices=OPTIMIZERS)
    momentum: float = option(0.0, "SGD momentum coefficient in [0, 1)", min=0.0, max=0.999999)
    nesterov: bool = option(False, "Nesterov momentum (needs momentum > 0)")
    beta1: float = option(0.9, "adam/adamw: decay of the running mean of gradients", min=0.0, max=0.999999)
    beta2: float = option(0.999, "adam/adamw: decay of the running mean of squared gradients",
                          min=0.0, max=0.999999999)
    rmsprop_decay: float = option(0.9, "rmsprop: decay rho of the running mean of squared gradients",
                                  min=0.0, max=0.999999999)
    epsilon: float = option(1e-8, "adam/adamw/rmsprop: added to the root-mean-square denominator",
                            min=0.0, min_exclusive=True, max=1.0)
    weight_decay: float = option(0.0, "L2 penalty lambda on weights (not biases): lambda/2 * sum(W**2) is "
                                      "added to the minibatch-mean loss, i.e. g = dW + lambda W; for adamw "
                                      "it is decoupled, W -= lr lambda W", min=0.0, max=1e6)
    weight_decay_scaling: str = option("none", "none: use weight_decay as is; train_size: divide it by the "
                                               "training-set size n (Nielsen's lambda/(2n) sum W^2, so his "
                                               "lambda = 5.0 means the same here)", choices=("none", "train_size"))
    schedule: str = option("constant", "learning-rate schedule: constant; step = times lr_decay_factor every "
                                       "lr_step_epochs; exponential = times lr_decay_factor per epoch "
                                       "(smoothly, per step); cosine = to 0 at the last step; plateau = "
                                       "times lr_decay_factor when the monitored metric has not improved "
                                       "for more than lr_plateau_patience epochs", choices=SCHEDULES)
    lr_decay_factor: float = option(0.1, "step/exponential/plateau: the multiplier applied to lr",
                                    min=0.0, min_exclusive=True, max=1.0)
    lr_step_epochs: int = option(10, "step: epochs between decays", min=1, max=100_000)
    lr_plateau_patience: int = option(5, "plateau: lr is cut once the monitored metric has not improved "
                                         "for more than this many epochs (PyTorch's patience)",
                                      min=0, max=100_000)
    lr_min: float = option(0.0, "plateau: lr is never decayed below this", min=0.0, max=1e6)
    warmup_epochs: float = option(0.0, "linear warmup, combined with any schedule: lr is multiplied by "
                                       "min(1, (step + 1) / warmup_steps)", min=0.0, max=100_000)
    monitor: str = option("val_loss", "metric that picks the best epoch (best.npz) and drives early "
                                      "stopping and plateau (train_loss/train_acc without validation)",
                          choices=MONITORS)
    early_stopping_patience: int = option(0, "stop after this many epochs without improvement of the "
                                             "monitored metric; 0 = never stop early", min=0, max=100_000)
    monitor_min_delta: float = option(0.0, "smallest change of the monitored metric that counts as an "
                                           "improvement (best epoch, early stopping, plateau)", min=0.0, max=1e6)
    restore_best: bool = option(False, "at the end, put back the weights of the best epoch (best.npz) "
                                       "before the final evaluation")
    dtype: str = option("float32", "floating-point type of weights, activations and gradients",
                        choices=("float32", "float64"))
    eval_batch_size: int = option(4096, "samples per batch when evaluating", min=1, max=10_000_000)
    clip_norm: float = option(0.0, "clip the gradient to this global L2 norm (over all weights and "
                                   "biases, before weight decay); 0 = no clipping", min=0.0, max=1e12)
    fused_update: str = option("auto", "plain SGD (no momentum, weight decay or clipping) only: on = the "
                                       "weight update is made by the weight-gradient product itself, W -= "
                                       "lr dZ^T A_prev, through numpy's BLAS (mbtrain/step.py); off = form "
                                       "dW, then update; auto = on where it measured faster (layers of "
                                       "32768+ weights on average). The two can differ in the last bit",
                                choices=("auto", "on", "off"), kind="switch")
    blas: str = option("auto", "library of the matrix products of fit and bench (training steps, "
                               "evaluation): numpy = the BLAS numpy was built with (OpenBLAS in its "
                               "wheels); mkl = Intel oneMKL from the optional mkl package (pip install "
                               "'mbtrain[mkl]') for products of 2^20 multiply-adds and more (0.74-0.85 of "
                               "OpenBLAS's time on an Intel Xeon, no faster on an AMD EPYC; smaller ones "
                               "stay with numpy's BLAS, run on one thread); auto = mkl where installed, "
                               "else numpy",
                       choices=("auto", "numpy", "mkl"))
    threads: int = option(0, "BLAS threads for this run (via threadpoolctl); 0 = the BLAS default, "
                             "usually one per core. Set 1 when running several trainings in parallel",
                          min=0, max=1024)


@dataclass
class CheckpointConfig:
    every_steps: int = option(0, "also save checkpoints/last.npz every this many optimizer steps "
                                 "(0 = only at the end of each epoch)", min=0, max=10**12)


@dataclass
class Config:
    seed: int = option(0, "seed of the one random generator: init, shuffling, dropout", min=0, max=2**63 - 1)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- reading

def read_yaml(path: str) -> dict:
    """The mapping in a YAML file; ConfigError naming the file for anything else."""
    if not os.path.exists(path):
        raise ConfigError(f"{path}: config file not found")
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory, expected a YAML config file")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file: {e}") from None
    return parse_yaml(text, path)


def parse_yaml(text: str, source: str) -> dict:
    """Parse config text with yaml.safe_load; the top level must be a mapping."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "python/" in problem:                   # !!python/object and friends
            problem = "tags such as !!python/object are refused: a config holds plain values only"
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    except (ValueError, TypeError, RecursionError) as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None
    if data is None:
        raise ConfigError(f"{source}: config file is empty; expected a mapping such as 'model: {{layers: [784, 100, 10]}}'")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=0.05` -> (['train', 'lr'], 0.05); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=0.05")
    key, _, value = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"--set {text!r}: expected a dotted key before '=', e.g. train.lr")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or "syntax error"
        if "python/" in problem:
            problem = "tags such as !!python/object are refused"
        raise ConfigError(f"--set {_name(key)}: value {value!r} is not valid YAML: {problem}") from None
    except (ValueError, TypeError, RecursionError) as e:
        raise ConfigError(f"--set {_name(key)}: value {value!r} is not valid YAML: {e}") from None
    return parts, parsed


def apply_override(raw: dict, parts: list[str], value: Any) -> None:
    """Set raw[parts[0]][parts[1]]... = value, creating sections as needed."""
    node = raw
    for i, p in enumerate(parts[:-1]):
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {_name('.'.join(parts))}: {_name('.'.join(parts[:i + 1]))} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Config from a YAML file (or `base` mapping), then overrides, validated."""
    raw = read_yaml(path) if path is not None else dict(base or {})
    source = path or "config"
    given = {}
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(raw, parts, value)
        apply_override(given, parts, value)
    build(Config, given, "", "--set")        # so a bad override is blamed on --set, not the file
    cfg = build(Config, raw, "", source)
    check_consistency(cfg, source)
    return cfg


def config_from_yaml_text(text: str, source: str) -> Config:
    """A Config from the YAML embedded in a run directory or checkpoint."""
    cfg = build(Config, parse_yaml(text, source), "", source)
    check_consistency(cfg, source)
    return cfg


# ---------------------------------------------------------------- validation

def build(cls, raw: dict, prefix: str, source: str):
    """Instantiate dataclass `cls` from mapping `raw`, validating every key and value."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: expected a mapping, got {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            dotted = prefix + _name(key)
            hint = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            did = f"; did you mean {prefix}{hint[0]}?" if hint else ""
            allowed = ", ".join(prefix + f for f in fields)
            raise ConfigError(f"{source}: unknown key {dotted}{did} (allowed: {allowed})")
    values = {}
    for name, f in fields.items():
        dotted = prefix + name
        if cls is Config and name in _SECTIONS:
            sub = _SECTIONS[name]
            # a present but empty section (`train:`) means defaults; `train: 0` is an error
            values[name] = build(sub, raw[name], dotted + ".", source) \
                if raw.get(name) is not None else sub()
            continue
        if name in raw:
            values[name] = check_value(raw[name], f, dotted, source)
    return cls(**values)


def _name(key) -> str:
    """A key as written in a message: quoted when it holds a newline or another control character."""
    text = str(key)
    return text if text.isprintable() else repr(text)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_YAML11_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def check_value(value, f: dataclasses.Field, dotted: str, source: str):
    """The validated value of one field, or ConfigError naming the key, the value and what is allowed."""
    meta = f.metadata
    kind = meta.get("kind")
    if value is None and meta.get("nullable"):
        return None
    bad = lambda allowed: ConfigError(f"{source}: {dotted} = {_show(value)}: expected {allowed}")
    if kind == "source":
        return _check_source(value, bad)
    if kind == "split":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a sample count (integer >= 0) or a fraction in [0, 1)")
        if isinstance(value, int):
            if value < 0:
                raise bad("a sample count (integer >= 0) or a fraction in [0, 1)")
        elif not (0.0 <= value < 1.0):
            raise bad("a sample count (integer >= 0) or a fraction in [0, 1)")
        return value
    if kind == "switch" and isinstance(value, bool):
        value = meta["choices"][1 if value else 2]     # YAML 1.1 reads on/off, yes/no as booleans
    if kind == "column":
        if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
            raise bad("a column name or a 0-based column index")
        return value
    if kind == "layers":
        if (not isinstance(value, list) or len(value) < 2
                or any(isinstance(v, bool) or not isinstance(v, int) for v in value)):
            raise bad("a list of at least two integer layer sizes, e.g. [784, 100, 10]")
        if any(v < 1 or v > 1_000_000 for v in value):
            raise bad("layer sizes between 1 and 1000000")
        return list(value)
    typ = f.type if not isinstance(f.type, str) else {"int": int, "float": float, "bool": bool, "str": str}[f.type]
    if typ is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
    elif typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif typ is float:
        if isinstance(value, str) and _YAML11_EXPONENT.fullmatch(value.strip()):
            value = float(value)          # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
        if not math.isfinite(value):
            raise bad("a finite number")
    elif typ is str:
        if not isinstance(value, str):
            raise bad(f"one of {', '.join(meta['choices'])}" if meta.get("choices") else "a string")
    choices = meta.get("choices")
    if choices and value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
        did = f" (did you mean {hint[0]}?)" if hint else ""
        raise bad(f"one of {', '.join(choices)}{did}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
        raise bad(f"a value {'>' if meta.get('min_exclusive') else '>='} {lo}")
    if hi is not None and value > hi:
        raise bad(f"a value <= {hi}")
    return value


def _check_source(value, bad):
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, dict) and set(value) == {"x", "y"} and all(
            isinstance(v, str) and v.strip() for v in value.values()):
        return dict(value)
    raise bad("a path, or a mapping {x: PATH, y: PATH}")


def check_consistency(cfg: Config, source: str) -> None:
    """Rules that tie two keys together."""
    if cfg.train.nesterov and cfg.train.momentum == 0.0:
        raise ConfigError(f"{source}: train.nesterov = true needs train.momentum > 0 (got 0.0)")
    t = cfg.train
    if t.optimizer != "sgd" and (t.momentum or t.nesterov):
        raise ConfigError(f"{source}: train.momentum/train.nesterov apply to train.optimizer = sgd only "
                          f"(got optimizer {t.optimizer}, momentum {t.momentum})")
    if t.fused_update == "on" and (t.optimizer != "sgd" or t.momentum or t.weight_decay or t.clip_norm):
        raise ConfigError(f"{source}: train.fused_update = on needs plain SGD: train.optimizer = sgd with "
                          f"momentum, weight_decay and clip_norm 0 (got optimizer {t.optimizer}, momentum "
                          f"{t.momentum}, weight_decay {t.weight_decay}, clip_norm {t.clip_norm})")
    if cfg.model.output == "identity_mse" and t.monitor == "val_acc":
        raise ConfigError(f"{source}: train.monitor = val_acc: regression (model.output = identity_mse) "
                          f"has no accuracy; use val_loss")
    if cfg.model.output == "softmax_cross_entropy" and cfg.model.layers[-1] < 2:
        raise ConfigError(f"{source}: model.layers = {cfg.model.layers}: softmax_cross_entropy needs "
                          f"an output layer of at least 2 units (one per class)")


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
             "checkpoint": CheckpointConfig}


def reference() -> list[tuple[str, Any, str]]:
    """(dotted key, default, meaning) for every key, for the README and `--help`."""
    rows = []

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            if cls is Config and f.name in _SECTIONS:
                walk(_SECTIONS[f.name], prefix + f.name + ".")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            meaning = f.metadata["help"]
            if f.metadata.get("choices"):
                meaning += f" (one of: {', '.join(f.metadata['choices'])})"
            rows.append((prefix + f.name, default, meaning))

    walk(Config, "")
    return rows
