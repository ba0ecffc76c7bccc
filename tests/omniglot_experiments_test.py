"""Omniglot configs through train_and_evaluate on a tiny random stand-in for the data."""

import json
import os

import numpy as np
import pytest

from experiments import train
from experiments.configs import (
  maml_omniglot,
  matching_omniglot,
  protonet_omniglot,
  relation_omniglot,
)

CONFIGS = {
  "protonet": protonet_omniglot,
  "matching": matching_omniglot,
  "relation": relation_omniglot,
  "maml": maml_omniglot,
}


@pytest.fixture
def fake_omniglot(monkeypatch):
  """Replaces the loader with random uint8 splits named as `load_omniglot` names them."""
  calls = []

  def load(data_dir=None, *, zip_dir=None, split_protocol="vinyals"):
    calls.append((data_dir, zip_dir, split_protocol))
    rng = np.random.default_rng(0)
    sizes = {"train": 30, "val": 10, "test": 10}
    return {k: rng.integers(0, 256, (n, 20, 28, 28), dtype=np.uint8) for k, n in sizes.items()}

  monkeypatch.setattr(train, "load_omniglot", load)
  return calls


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_smoke_config_writes_accuracy(tmp_path, fake_omniglot, method):
  config = CONFIGS[method].get_config("smoke")
  assert config.task == "omniglot" and config.method == method
  summary = train.train_and_evaluate(config, str(tmp_path))
  report = json.loads((tmp_path / "eval.json").read_text())
  for metrics in (summary, report["metrics"]):
    accuracy = metrics["accuracy"]
    assert accuracy["n"] + accuracy["nonfinite"] == config.num_eval_tasks == 4
    assert 0.0 <= accuracy["mean"] <= 1.0
  if method == "maml":
    assert report["metrics"]["accuracy"] == report["metrics"][f"accuracy@{config.eval_inner_steps}"]
  assert fake_omniglot == [(None, None, "vinyals")]
  assert not (tmp_path / "sinusoid.png").exists()
  assert os.path.exists(tmp_path / "config.json")


@pytest.mark.parametrize(
  "field, value, fragment",
  [
    ("ways", 1, "--config.ways=1"),
    ("shots", 0, "--config.shots=0"),
    ("method", "foo", "--config.method='foo': unknown method"),
    ("queries", 20, "--config.queries=20"),
    ("split_protocol", "nope", "--config.split_protocol='nope'"),
  ],
)
def test_bad_flag_fails_in_one_line_before_loading(tmp_path, fake_omniglot, field, value, fragment):
  config = maml_omniglot.get_config("smoke")
  with config.unlocked():
    config[field] = value
  with pytest.raises(ValueError, match=fragment.replace(".", r"\.")) as raised:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "\n" not in str(raised.value)
  assert not (tmp_path / "run").exists() and not fake_omniglot


def test_too_many_ways_names_the_flag(tmp_path, fake_omniglot):
  config = protonet_omniglot.get_config("smoke")
  with config.unlocked():
    config.ways = 11  # the fake val and test splits have 10 classes
  with pytest.raises(ValueError, match=r"--config\.ways=11") as raised:
    train.train_and_evaluate(config, str(tmp_path))
  assert "\n" not in str(raised.value)


@pytest.mark.parametrize("module", sorted(CONFIGS.values(), key=lambda m: m.__name__))
def test_full_configs_validate(tmp_path, module):
  config = module.get_config()
  assert config.num_eval_tasks == 1000 and config.split_protocol == "vinyals"
  train.validate(config, str(tmp_path / "run"))
  with pytest.raises(ValueError, match="unknown config argument"):
    module.get_config("big")
