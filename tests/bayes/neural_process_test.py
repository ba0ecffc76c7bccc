"""Neural processes: objectives by hand, the latent KL, ML >= ELBO, masking and set invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from metalearn import core
from metalearn.algorithms import neural_process as nps
from metalearn.data import gp
from metalearn.episodes import Split

SMALL = {"width": 16, "embedding": 8, "encoder_layers": 2, "decoder_layers": 2}
LATENT = {**SMALL, "latent": 4, "num_samples": 3, "num_eval_samples": 5}
LEARNERS = {
  "cnp": lambda: nps.cnp(**SMALL),
  "acnp": lambda: nps.cnp(attentive=True, num_heads=2, **SMALL),
  "np_ml": lambda: nps.np_latent(**LATENT),
  "anp_elbo": lambda: nps.np_latent(attentive=True, num_heads=2, objective="elbo", **LATENT),
}


def _tasks(n=4, seed=0, **kw):
  return gp.sample_tasks(jax.random.PRNGKey(seed), n, kernel=gp.get_kernel("eq"), **kw)


def _init(learner, task, seed=1):
  return learner.init(jax.random.PRNGKey(seed), task)


def test_cnp_loss_is_the_gaussian_nll_of_its_predictive():
  learner = LEARNERS["cnp"]()
  task = core.task(_tasks(), 0)
  theta = _init(learner, task)
  loss, _ = learner.meta_loss(theta, task, jax.random.PRNGKey(0))
  pred = learner.adapt(theta, task.context, jax.random.PRNGKey(0))(task.target.x)
  assert pred.mean.shape == (1, 50) and np.all(np.asarray(pred.scale) >= 0.1)
  want = -stats.norm(pred.mean[0], pred.scale[0]).logpdf(task.target.y[:, 0]).mean()
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_elbo_kl_term_is_zero_when_the_two_posteriors_coincide():
  """No real targets: q(z | C u T) is q(z | C), so the KL must vanish; with targets it does not."""
  learner = LEARNERS["anp_elbo"]()
  task = core.task(_tasks(min_context=5), 0)
  theta = _init(learner, task)
  empty = task._replace(target=task.target._replace(mask=jnp.zeros(50, bool)))
  _, metrics = learner.meta_loss(theta, empty, jax.random.PRNGKey(0))
  np.testing.assert_allclose(metrics["kl_term"], 0.0, atol=1e-6)
  _, metrics = learner.meta_loss(theta, task, jax.random.PRNGKey(0))
  assert metrics["kl_term"] > 1e-5


def test_ml_objective_is_at_least_the_elbo():
  """log E_p(z|C) p(y|z) >= E_q log p(y|z) - KL(q || p), estimated with many draws of z."""
  kw = {**SMALL, "latent": 4, "num_samples": 4096}
  ml, elbo = nps.np_latent(objective="ml", **kw), nps.np_latent(objective="elbo", **kw)
  tasks = _tasks(n=3, seed=2, min_context=3, max_context=8, num_target=10)
  theta = _init(ml, core.task(tasks, 0), seed=3)
  # Spread the latent encoder's output so that q(z|C) and q(z|C u T) differ visibly.
  theta = jax.tree_util.tree_map_with_path(
    lambda p, a: a * 4.0 if "lat_head" in jax.tree_util.keystr(p) else a, theta
  )
  for i in range(3):
    task = core.task(tasks, i)
    nll_ml, _ = ml.meta_loss(theta, task, jax.random.PRNGKey(i))
    nll_elbo, metrics = elbo.meta_loss(theta, task, jax.random.PRNGKey(i))
    assert metrics["kl_term"] > 0.01
    assert nll_ml < nll_elbo, (i, nll_ml, nll_elbo)


def test_ml_objective_is_the_log_mean_likelihood_of_prior_draws():
  learner = nps.np_latent(**LATENT)
  task = core.task(_tasks(), 1)
  theta = _init(learner, task)
  key = jax.random.PRNGKey(7)
  loss, _ = learner.meta_loss(theta, task, key)
  net = nps.NeuralProcessNet(16, 8, 2, 2, 4, False, 8)
  zs = net.apply(theta, task.context, method="latent_dist").sample(seed=key, sample_shape=3)
  r = net.apply(theta, task.context, task.target.x, method="representation")
  joint = []
  for z in zs:
    mu, sigma = net.apply(theta, task.target.x, r, z, method="decode")
    joint.append(stats.norm(mu, sigma).logpdf(task.target.y[:, 0]).sum())
  want = -(np.logaddexp.reduce(joint) - np.log(3)) / 50
  np.testing.assert_allclose(loss, want, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LEARNERS))
@pytest.mark.parametrize("seed", range(2))
def test_padded_context_points_change_nothing(name, seed):
  """Context rows with mask False, at random places and holding garbage, are ignored."""
  learner = LEARNERS[name]()
  tasks = _tasks(seed=seed, min_context=4, max_context=12)
  task = core.task(tasks, 0)
  theta = _init(learner, task)
  rng = np.random.default_rng(seed)
  c = task.context
  real = np.flatnonzero(np.asarray(c.mask))
  n = len(real) + 9
  slots = np.sort(rng.choice(n, len(real), replace=False))
  x = rng.normal(size=(n, 1)) * 30
  y = rng.normal(size=(n, 1)) * 1e3
  mask = np.zeros(n, bool)
  x[slots], y[slots], mask[slots] = np.asarray(c.x)[real], np.asarray(c.y)[real], True
  padded = task._replace(
    context=Split(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), jnp.asarray(mask))
  )
  compact = task._replace(context=Split(*(a[real] for a in c)))
  key = jax.random.PRNGKey(seed)
  loss = jax.jit(learner.meta_loss)
  loss_padded, _ = loss(theta, padded, key)
  loss_compact, _ = loss(theta, compact, key)
  np.testing.assert_allclose(loss_padded, loss_compact, rtol=1e-5, atol=1e-6)
  predict = jax.jit(lambda th, c, k, x: learner.adapt(th, c, k)(x))
  pa = predict(theta, padded.context, key, task.target.x)
  pb = predict(theta, compact.context, key, task.target.x)
  np.testing.assert_allclose(pa.mean, pb.mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(pa.scale, pb.scale, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["cnp", "acnp"])
def test_predictive_is_invariant_to_the_order_of_the_context(name):
  learner = LEARNERS[name]()
  task = core.task(_tasks(min_context=10), 0)
  theta = _init(learner, task)
  perm = np.random.default_rng(0).permutation(30)
  shuffled = Split(*(a[perm] for a in task.context))
  a = learner.adapt(theta, task.context, None)(task.target.x)
  b = learner.adapt(theta, shuffled, None)(task.target.x)
  np.testing.assert_allclose(a.mean, b.mean, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attentive", [False, True])
def test_empty_context_gives_a_zero_representation(attentive):
  net = nps.NeuralProcessNet(16, 8, 2, 2, 0, attentive, 2)
  task = core.task(_tasks(), 0)
  theta = net.init(jax.random.PRNGKey(0), task.context, task.target.x)
  empty = task.context._replace(mask=jnp.zeros(30, bool))
  r = net.apply(theta, empty, task.target.x, method="representation")
  np.testing.assert_array_equal(r, 0.0)


@pytest.mark.parametrize("name", ["cnp", "anp_elbo"])
def test_vmap_equals_loop_and_jit_equals_eager(name):
  learner = LEARNERS[name]()
  tasks = _tasks(n=3)
  theta = _init(learner, core.task(tasks, 0))
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  batched, _ = jax.jit(jax.vmap(learner.meta_loss, in_axes=(None, 0, 0)))(theta, tasks, keys)
  loop = [learner.meta_loss(theta, core.task(tasks, i), keys[i])[0] for i in range(3)]
  np.testing.assert_allclose(batched, loop, rtol=1e-5)
  grads = jax.grad(lambda th: learner.meta_loss(th, core.task(tasks, 0), keys[0])[0])(theta)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_bad_hyperparameters_raise():
  with pytest.raises(ValueError, match="objective"):
    nps.np_latent(objective="iwae")
  with pytest.raises(ValueError, match="width"):
    nps.cnp(width=0)
  with pytest.raises(ValueError, match="num_samples"):
    nps.np_latent(num_samples=0)
