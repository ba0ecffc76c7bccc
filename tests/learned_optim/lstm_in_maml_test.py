"""MAML with a named inner optimizer from the sinusoid config (`:maml_adam`, `:maml_lstm`)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import train
from experiments.configs import sinusoid
from metalearn import algorithms
from metalearn import episodes as ep
from metalearn.learned_optim import inner_optimizer
from metalearn.learned_optim.lstm import ADAM_EPS_ROOT
from metalearn.models import MLP

LR = 0.01  # the sinusoid config's inner_lr


def _config(arg):
  config = sinusoid.get_config(arg)
  with config.unlocked():
    config.hidden = (8,)  # a small network: the same code path, fast
  return config


def _episode(seed=0, n=6, dtype=jnp.float32):
  rng = np.random.default_rng(seed)

  def split():
    x = rng.uniform(-5, 5, size=(n, 1))
    y = 2.0 * np.sin(x - 0.5)
    return ep.Split(jnp.asarray(x, dtype), jnp.asarray(y, dtype), jnp.ones(n, bool))

  return ep.Episode(split(), split())


def test_the_variants_are_maml_with_the_named_optimizer():
  for arg, name in (("maml_adam", "adam"), ("maml_lstm", "lstm")):
    config = sinusoid.get_config(arg)
    assert config.method == "maml" and config.learner.inner_optimizer == name
    assert train.learner_kwargs(config)["inner_optimizer"] == name
    assert train.identity(config)["learner"]["inner_optimizer"] == name
  assert "inner_optimizer" not in sinusoid.get_config("maml").learner
  assert "inner_optimizer" not in train.identity(sinusoid.get_config("maml"))["learner"]


def _lstm_grads(inner_steps):
  learner = train.build_learner(_config("maml_lstm,smoke"), inner_steps=inner_steps)
  episode = _episode()
  theta = learner.init(jax.random.key(0), episode)
  assert sorted(theta) == ["lstm", "params"]
  loss = lambda t: learner.meta_loss(t, episode, jax.random.key(1))[0]
  grads = jax.jit(jax.grad(loss))(theta)["lstm"]
  return {jax.tree_util.keystr(p): g for p, g in jax.tree_util.tree_leaves_with_path(grads)}


def test_the_config_learners_meta_gradient_reaches_the_lstm_weights():
  for name, g in _lstm_grads(2).items():
    assert bool(jnp.all(jnp.isfinite(g))), name
    assert float(jnp.abs(g).max()) > 0.0, name  # every LSTM weight group gets a gradient
  # With one inner step (the sinusoid protocol's training) the LSTM reads a
  # zero state, so its recurrent weights get exactly no meta-gradient; every
  # other weight group does.
  for name, g in _lstm_grads(1).items():
    if name.endswith("['w_h']"):
      assert float(jnp.abs(g).max()) == 0.0, name
    else:
      assert float(jnp.abs(g).max()) > 0.0, name


def test_named_sgd_and_adam_are_the_optax_optimizers():
  model, episode, key = MLP(hidden=(8,)), _episode(2), jax.random.key(1)
  default = algorithms.maml(model, inner_steps=2, inner_lr=LR)
  theta = default.init(jax.random.key(0), episode)
  loss = lambda learner: float(learner.meta_loss(theta, episode, key)[0])
  by_name = algorithms.maml(model, inner_steps=2, inner_optimizer=inner_optimizer("sgd", LR))
  assert loss(by_name) == loss(default)  # bit for bit
  adam = algorithms.maml(model, inner_steps=2, inner_optimizer=inner_optimizer("adam", LR))
  optax_adam = algorithms.maml(
    model, inner_steps=2, inner_optimizer=optax.adam(LR, eps_root=ADAM_EPS_ROOT)
  )
  assert loss(adam) == loss(optax_adam)
  assert loss(adam) != loss(default)


def test_bad_names_and_rates_are_refused():
  with pytest.raises(ValueError, match="unknown inner optimizer 'nope'"):
    inner_optimizer("nope", LR)
  with pytest.raises(ValueError, match="needs a learning rate"):
    inner_optimizer("adam")
  with pytest.raises(ValueError, match="inner_lr must be > 0"):
    inner_optimizer("adam", -1.0)
  config = _config("maml_adam,smoke")
  with config.unlocked():
    config.learner.inner_optimizer = "nope"
  with pytest.raises(train.ConfigError, match="unknown inner optimizer 'nope'"):
    train.build_learner(config)


@pytest.mark.parametrize("arg", ["maml_adam,smoke", "maml_lstm,smoke"])
def test_smoke_variants_train_and_evaluate(tmp_path, arg):
  config = _config(arg)
  with config.unlocked():
    config.baseline = False
    config.num_steps, config.steps_per_call = 2, 1
    config.eval_every = config.checkpoint_every = 2
    config.log_every = 1
    config.num_val_tasks = config.num_eval_tasks = 4
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert set(summary) == {"mse@0", "mse@1", "mse@10"}
  assert all(v["n"] + v["nonfinite"] == config.num_eval_tasks for v in summary.values())
