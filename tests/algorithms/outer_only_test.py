"""`outer_only`: parameters the outer loop learns and the inner loop leaves alone.

The reference MAML code keeps batch normalisation out of its fast weights;
`outer_only="norm_"` does the same for Conv4. Checked here: the matched
parameters come out of adaptation unchanged while the others move; keeping
everything but the head out of the inner loop is ANIL exactly (adaptation and
meta-gradient); Meta-SGD learns no step for a parameter it does not adapt; the
config's learner block carries the setting; bad patterns fail in one line.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from experiments import train
from experiments.configs import maml_omniglot
from metalearn import algorithms, inner
from metalearn import episodes as ep
from metalearn.algorithms import common
from metalearn.models import Conv4, as_model

WAYS = 3


def _episode(seed: int = 0) -> ep.Episode:
  rng = np.random.default_rng(seed)

  def split(n):
    x = jnp.asarray(rng.normal(size=(n, 28, 28, 1)), jnp.float32)
    return ep.Split(x=x, y=jnp.arange(n) % WAYS, mask=jnp.ones(n, bool))

  return ep.Episode(split(2 * WAYS), split(2 * WAYS))


def _flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


def _model():
  return Conv4(ways=WAYS, channels=8)


def _logits(learner, theta, episode, key):
  """The adapted predictor's outputs on the query images, as one jitted program."""
  return jax.jit(lambda t: learner.adapt(t, episode.support, key)(episode.query.x))(theta)


# Each factory's inner update, rebuilt by hand (its meta-parameters are read from theta).
UPDATES = {
  "maml": inner.as_learned_update(inner.sgd(0.4)),
  "fomaml": inner.as_learned_update(inner.sgd(0.4)),
  "metasgd": inner.learned_rates(0.4, name="lr"),
  "metacurvature": inner.learned_curvature(0.4, name="curvature"),
}


@pytest.mark.parametrize("factory", sorted(UPDATES))
def test_matched_parameters_are_not_adapted_and_the_rest_are(factory):
  episode = _episode()
  model = _model()
  learner = algorithms.get(factory)(
    model, inner_lr=0.4, inner_steps=2, outer_only="norm_", objective="cross_entropy"
  )
  theta = learner.init(jax.random.key(0), episode)
  run = common.inner_loop(
    as_model(model),
    ep.get_objective("cross_entropy"),
    update=UPDATES[factory],
    inner_steps=2,
    partition=common.outer_only("norm_"),
  )
  phi = _flat(jax.jit(run)(theta, episode.support))
  before = _flat(theta["params"])
  assert set(phi) == set(before)
  for path, value in before.items():
    moved = float(jnp.max(jnp.abs(phi[path] - value)))
    if path.startswith("norm_"):
      assert moved == 0.0, path
    else:
      assert moved > 0.0, path
  # The learner's own predictor is the adapted network: its logits on the query
  # equal the model applied to these weights.
  logits = _logits(learner, theta, episode, jax.random.key(1))
  expected = as_model(model).apply(traverse_util.unflatten_dict(phi, sep="/"), episode.query.x)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  # The matched parameters still get a meta-gradient (the outer loop learns them).
  grads, _ = jax.jit(jax.grad(learner.meta_loss, has_aux=True))(theta, episode, jax.random.key(1))
  assert all(float(jnp.max(jnp.abs(g))) > 0 for p, g in _flat(grads["params"]).items())


def test_everything_but_the_head_out_of_the_inner_loop_is_anil():
  episode = _episode(1)
  kwargs = dict(inner_lr=0.4, inner_steps=2, objective="cross_entropy")
  anil = algorithms.anil(_model(), **kwargs)
  maml = algorithms.maml(_model(), outer_only=r"^(?!head/)", **kwargs)
  theta = anil.init(jax.random.key(0), episode)
  key = jax.random.key(2)
  np.testing.assert_allclose(
    _logits(maml, theta, episode, key),
    _logits(anil, theta, episode, key),
    rtol=1e-6,
    atol=1e-6,
  )
  (la, _), ga = jax.jit(jax.value_and_grad(anil.meta_loss, has_aux=True))(theta, episode, key)
  (lm, _), gm = jax.jit(jax.value_and_grad(maml.meta_loss, has_aux=True))(theta, episode, key)
  np.testing.assert_allclose(lm, la, rtol=1e-6)
  for path, g in _flat(ga).items():
    np.testing.assert_allclose(_flat(gm)[path], g, rtol=1e-4, atol=1e-6, err_msg=path)


def test_metasgd_learns_no_step_for_a_parameter_it_does_not_adapt():
  episode = _episode()
  learner = algorithms.metasgd(_model(), outer_only="norm_", objective="cross_entropy")
  theta = learner.init(jax.random.key(0), episode)
  rates = _flat(theta["lr"])
  assert rates and not [p for p in rates if p.startswith("norm_")]
  assert set(rates) == {p for p in _flat(theta["params"]) if not p.startswith("norm_")}


@pytest.mark.parametrize(
  "pattern, match",
  [
    ("norm_(", "not a regular expression"),
    ("batchnorm", "matches no parameter; paths are conv_0/kernel"),
    (".", "matches every parameter"),
  ],
)
def test_bad_patterns_fail_in_one_line(pattern, match):
  episode = _episode()
  with pytest.raises(ValueError, match=match) as info:
    learner = algorithms.fomaml(_model(), outer_only=pattern, objective="cross_entropy")
    theta = learner.init(jax.random.key(0), episode)
    learner.adapt(theta, episode.support, jax.random.key(1))
  assert "\n" not in str(info.value)


def test_the_config_block_carries_outer_only_to_the_factory():
  # The Omniglot config keeps batch norm out of first-order MAML's inner loop
  # (the reference code's choice); MAML itself keeps the factory's default.
  assert maml_omniglot.get_config("maml,smoke").learner.outer_only is None
  config = maml_omniglot.get_config("fomaml,smoke")
  assert config.learner.outer_only == "norm_"
  assert train.learner_kwargs(config)["outer_only"] == "norm_"
  assert train.identity(config)["learner"]["outer_only"] == "norm_"
  episode, key = _episode(), jax.random.key(1)
  built = train.build_learner(config)
  theta = built.init(jax.random.key(0), episode)
  by_hand = {
    o: algorithms.fomaml(
      Conv4(ways=config.ways), inner_lr=0.4, inner_steps=1, outer_only=o, objective="cross_entropy"
    )
    for o in ("norm_", "")
  }
  logits = {o: _logits(lrn, theta, episode, key) for o, lrn in by_hand.items()}
  np.testing.assert_array_equal(_logits(built, theta, episode, key), logits["norm_"])
  assert float(jnp.max(jnp.abs(logits["norm_"] - logits[""]))) > 1e-4
