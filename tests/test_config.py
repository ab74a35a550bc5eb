"""Config: defaults, merge order, overrides, and every rejection path with its message."""

from __future__ import annotations

import pytest
import yaml

from mbtrain.config import Config, load_config, parse_override, reference
from mbtrain.errors import ConfigError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_fill_missing_keys(tmp_path):
    cfg = load_config(write(tmp_path, "model: {layers: [4, 3]}\n"))
    assert cfg.model.layers == [4, 3]
    assert cfg.train == Config().train and cfg.seed == 0


def test_file_then_overrides_in_order(tmp_path):
    path = write(tmp_path, "train: {lr: 0.5, epochs: 3}\nmodel: {layers: [4, 8, 3], activation: tanh}\n")
    cfg = load_config(path, ["train.lr=0.25", "train.lr=0.125", "model.layers=[4, 5, 3]", "seed=9"])
    assert cfg.train.lr == 0.125                     # the last override wins
    assert cfg.train.epochs == 3                     # untouched file value
    assert cfg.model.layers == [4, 5, 3] and cfg.model.activation == "tanh" and cfg.seed == 9


def test_override_values_parse_as_yaml(tmp_path):
    cfg = load_config(write(tmp_path, "seed: 1\n"), ["train.nesterov=true", "train.momentum=0.9",
                                                      "data.test=null", "data.validation=0.25"])
    assert cfg.train.nesterov is True and cfg.data.test is None and cfg.data.validation == 0.25


def test_int_is_accepted_for_float(tmp_path):
    assert load_config(write(tmp_path, "train: {lr: 1}\n")).train.lr == 1.0


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, "train: {lr: 0.3}\n"), ["model.layers=[4, 2]"])
    again = load_config(write(tmp_path, cfg.to_yaml(), "resolved.yaml"))
    assert again == cfg


@pytest.mark.parametrize("text,overrides,needles", [
    ("trian: {lr: 1}\n", [], ["unknown key trian", "did you mean train?"]),
    ("train: {lrr: 1}\n", [], ["unknown key train.lrr", "did you mean train.lr?"]),
    ("train: {bogus_key: 1}\n", [], ["unknown key train.bogus_key", "allowed: train.epochs"]),
    ("train: {lr: fast}\n", [], ["train.lr = 'fast'", "a number"]),
    ("train: {lr: 0}\n", [], ["train.lr = 0", "> 0.0"]),
    ("train: {lr: -1}\n", [], ["train.lr = -1", "> 0.0"]),
    ("train: {lr: .inf}\n", [], ["train.lr", "finite"]),
    ("train: {batch_size: 0}\n", [], ["train.batch_size = 0", ">= 1"]),
    ("train: {batch_size: 2.5}\n", [], ["train.batch_size = 2.5", "an integer"]),
    ("train: {batch_size: true}\n", [], ["train.batch_size = True", "an integer"]),
    ("train: {epochs: -3}\n", [], ["train.epochs = -3", ">= 1"]),
    ("train: {epochs: 100000000}\n", [], ["train.epochs = 100000000", "<= 100000"]),
    ("train: {momentum: 1.5}\n", [], ["train.momentum = 1.5", "<= 0.999999"]),
    ("train: {nesterov: 'yes please'}\n", [], ["train.nesterov", "true or false"]),
    ("train: {nesterov: true}\n", [], ["train.nesterov = true needs train.momentum > 0"]),
    ("train: {dtype: float16}\n", [], ["train.dtype = 'float16'", "float32, float64"]),
    ("model: {activation: rleu}\n", [], ["model.activation = 'rleu'", "did you mean relu?"]),
    ("model: {output: softmax}\n", [], ["model.output = 'softmax'", "softmax_cross_entropy"]),
    ("model: {init: glorot}\n", [], ["model.init = 'glorot'", "xavier"]),
    ("model: {layers: 784}\n", [], ["model.layers = 784", "list of at least two"]),
    ("model: {layers: [784]}\n", [], ["model.layers = [784]", "at least two"]),
    ("model: {layers: [784, 0, 10]}\n", [], ["model.layers", "between 1 and"]),
    ("model: {layers: [784, a, 10]}\n", [], ["model.layers", "integer layer sizes"]),
    ("model: {layers: [784, 1]}\n", [], ["softmax_cross_entropy needs", "at least 2"]),
    ("data: {validation: -1}\n", [], ["data.validation = -1", "fraction"]),
    ("data: {validation: 1.5}\n", [], ["data.validation = 1.5", "fraction"]),
    ("data: {train: 12}\n", [], ["data.train = 12", "a path"]),
    ("data: {train: {x: a.npy}}\n", [], ["data.train", "{x: PATH, y: PATH}"]),
    ("seed: -1\n", [], ["seed = -1", ">= 0"]),
    ("train: 5\n", [], ["train: expected a mapping"]),
    ("[1, 2]\n", [], ["expected a mapping of config keys", "list"]),
    ("", [], ["config file is empty"]),
    ("train: {lr: [\n", [], ["invalid YAML at line"]),
    ("!!python/object:os.system {}\n", [], ["invalid YAML", "python/object"]),
    ("seed: 1\n", ["train.lr"], ["--set 'train.lr'", "KEY=VALUE"]),
    ("seed: 1\n", ["=3"], ["--set '=3'", "dotted key"]),
    ("seed: 1\n", ["train..lr=3"], ["dotted key"]),
    ("seed: 1\n", ["train.lr=[1"], ["--set train.lr", "value '[1'"]),
    ("seed: 1\n", ["seed.x=1"], ["--set seed.x", "seed is not a section"]),
    ("seed: 1\n", ["train.lrate=0.1"], ["unknown key train.lrate", "did you mean train.lr?"]),
])
def test_rejections_name_key_value_and_what_is_allowed(tmp_path, text, overrides, needles):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))


def test_python_tag_is_never_constructed(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_config(path)
    assert not marker.exists()


def test_parse_override():
    assert parse_override("train.lr=0.001") == (["train", "lr"], 1e-3)
    assert parse_override("model.layers=[2, 3]") == (["model", "layers"], [2, 3])
    assert parse_override("data.train=a=b.npz") == (["data", "train"], "a=b.npz")


def test_reference_documents_every_key():
    keys = {k for k, _, _ in reference()}
    assert {"seed", "data.train", "model.layers", "train.lr", "train.dtype"} <= keys
    assert all(meaning for _, _, meaning in reference())
    assert yaml.safe_load(Config().to_yaml())["train"]["dtype"] == "float32"


@pytest.mark.parametrize("text", ["1e-3", "1E-3", "1.e-3", ".1e-2", "+1e-3"])
def test_exponent_without_dot_is_a_number(tmp_path, text):
    """YAML 1.1 reads 1e-3 as a string; a float key takes it as the number everybody means."""
    assert load_config(write(tmp_path, f"train: {{lr: {text}}}\n")).train.lr == float(text)
    assert load_config(write(tmp_path, "seed: 1\n"), [f"train.lr={text}"]).train.lr == float(text)
