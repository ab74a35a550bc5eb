import os

from conftest import ROOT
from mbtrain.config import load_config


def test_default_config_loads():
    cfg = load_config(os.path.join(ROOT, "configs", "mnist.yaml"))
    assert cfg.model.layers == [784, 512, 10]
