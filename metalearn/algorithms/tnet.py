"""T-Net and MT-Net: a meta-learned linear map after each layer that the inner loop leaves fixed.

T-Net writes each layer as `y = (x W + b) T` (flax's row convention; the paper's
`T W x`). The inner loop adapts W and b by SGD; T is meta-learned with the
initialisation, through the adaptation, as MAML does. MT-Net adds a binary mask
`m [out]` per layer, sampled once per task: only the output units with `m_j = 1`
adapt, `W <- W - alpha * (grad_W L) diag(m)`, and `m_j ~ Bernoulli(sigmoid(zeta_j))`
is trained with the straight-through Gumbel-softmax estimator (two classes,
logits `[zeta_j, 0]`, temperature `temperature`; hard sample forward, soft
gradient backward), as the authors' code does.

As a transformation of the inner gradient (exact). Write `A = W T` and `c = b T`:
the network is the plain one with weights `(A, c)`, and one step on W is

  A' = W' T = A - alpha * G_A P,   P = T^T diag(m) T   (m = 1 for T-Net),

a step on the unmapped network whose gradient is multiplied along each layer's
output axis by a learned positive semi-definite matrix: a preconditioner of the
gradient, of the same kind as Meta-Curvature's output-mode matrix but
factorised (and masked). That is how it is computed here: `layer_metric` is an
`inner.LearnedUpdate` (`theta -> optax` transformation, like Meta-SGD's rates),
the inner loop starts at `transform_layers(W_0, T)` and adapts `(A, c)` with it,
and `adapt` returns the unmapped network's weights. As functions of
`(W_0, T, zeta)` the losses equal those of the mapped network, so the
meta-gradients are the paper's, not those of a reparametrised `A_0`.

Layers are every parameter group with a `kernel` (`models.warped`): each Dense
and convolution of `models.MLP` and `models.Conv4`, the output layer included,
as in the authors' code. Conv4's batch-norm scale and offset are adapted by
plain SGD (mask 1), as this project's MAML adapts them (the authors' code does
not adapt them at all).

References:
  Lee, Choi. Gradient-Based Meta-Learning with Learned Layerwise Metric and
  Subspace. ICML 2018 (Sec. 3: T-net, MT-net; the Gumbel-softmax masks), and the
  authors' code, github.com/yoonholee/MT-net (maml.py: T initialised to the
  identity after every layer, one mask per output unit shared by W and b,
  logits initialised to 0, temperature 1).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from metalearn import episodes as ep
from metalearn import inner
from metalearn.algorithms import common
from metalearn.core import MetaLearner, predictor
from metalearn.models import Model, as_model, warped
from metalearn.types import Params, PRNGKey, PyTree


def precondition_layers(maps: PyTree, masks: PyTree | None = None) -> optax.GradientTransformation:
  """`G -> G P` along each layer's output axis, `P = T^T diag(m) T`; other leaves unchanged.

  Args:
    maps: `T [out, out]` per layer group (`models.warped.identity_maps` layout).
    masks: `m [out]` per layer group, or None for all ones (T-Net).
  """

  def metric(t, m):
    return t.T @ t if m is None else t.T @ (m[:, None] * t)

  if masks is None:
    matrices = jax.tree_util.tree_map(lambda t: metric(t, None), maps)
  else:
    matrices = jax.tree_util.tree_map(metric, maps, masks)

  def update(grads, state, params=None):
    del params
    return warped.multiply_output_axis(grads, matrices), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def sample_masks(logits: PyTree, key: PRNGKey, temperature: float) -> PyTree:
  """MT-Net's masks: hard Bernoulli(sigmoid(zeta)) samples with straight-through gradients.

  Two-class Gumbel-softmax on logits `[zeta, 0]`: `s = sigmoid((zeta + g_1 - g_2) / tau)`
  with Gumbel noise `g`; the mask is `1[s >= 1/2] + (s - stop_gradient(s))`, exactly
  0 or 1 in value, with the gradient of `s`.

  Args:
    logits: `zeta [out]` per layer group.
    key: the task's key.
    temperature: tau > 0.
  """
  leaves, treedef = jax.tree_util.tree_flatten(logits)
  keys = jax.random.split(key, len(leaves))

  def one(zeta, k):
    g = jax.random.gumbel(k, (2, *zeta.shape), zeta.dtype)
    soft = jax.nn.sigmoid((zeta + g[0] - g[1]) / temperature)
    hard = (soft >= 0.5).astype(zeta.dtype)
    return hard + (soft - jax.lax.stop_gradient(soft))

  return jax.tree_util.tree_unflatten(
    treedef, [one(z, k) for z, k in zip(leaves, keys, strict=True)]
  )


def layer_metric(
  inner_lr: float, *, masked: bool = False, logit_init: float = 0.0, name: str = "tnet"
) -> inner.LearnedUpdate:
  """T-Net's update as a learned transformation: `{"T"[, "logits"]} -> precondition, then SGD`.

  Its meta-parameters are identity maps (and mask logits `logit_init`); the
  transformation reads `meta["masks"]` when present (sampled per task by MT-Net).
  """
  sgd = inner.sgd(inner_lr)

  def init(key, fast):
    del key
    meta = {"T": warped.identity_maps(fast)}
    if masked:
      meta["logits"] = warped.per_layer(fast, lambda w, dt: jnp.full((w,), logit_init, dt))
    return meta

  def transform(meta):
    return optax.chain(precondition_layers(meta["T"], meta.get("masks")), sgd)

  return inner.LearnedUpdate(init, transform, name)


def _learner(
  name,
  model,
  *,
  masked,
  inner_lr,
  inner_steps,
  temperature,
  logit_init,
  first_order,
  remat,
  objective,
) -> MetaLearner:
  inner.gradient.check_steps(inner_steps)
  if masked and not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  model, objective = as_model(model), ep.get_objective(objective)
  update = layer_metric(inner_lr, masked=masked, logit_init=logit_init, name="tnet")

  def run(theta, support, key) -> tuple[Params, dict]:
    meta = dict(theta["tnet"])
    if masked:
      meta["masks"] = sample_masks(meta.pop("logits"), key, temperature)
    loss = lambda a: objective.loss(model.apply(a, support.x), support)
    start = warped.transform_layers(theta["params"], meta["T"])  # A_0 = W_0 T, c_0 = b_0 T
    phi, _, _ = inner.gradient_descent(
      loss,
      start,
      num_steps=inner_steps,
      optimizer=update.transform(meta),
      first_order=first_order,
      remat=remat,
    )
    return phi, meta.get("masks")

  def adapt(theta, support, key):
    return predictor(model.apply, run(theta, support, key)[0])

  def meta_loss(theta, episode, key):
    ep.check_episode(episode, batched=False)
    phi, masks = run(theta, episode.support, key)
    loss, metrics = common.query_loss(predictor(model.apply, phi), objective, episode.query)
    if masks is not None:
      leaves = jax.tree_util.tree_leaves(jax.lax.stop_gradient(masks))
      metrics["adapted_fraction"] = sum(m.sum() for m in leaves) / sum(m.size for m in leaves)
    return loss, metrics

  return MetaLearner(common.init_with_update(model, update), adapt, meta_loss, name=name)


def tnet(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 1,
  first_order: bool = False,
  remat: bool = False,
  objective: str | ep.Objective = "mse",
) -> MetaLearner:
  """T-Net: MAML on `y = (x W + b) T` with T meta-learned and held fixed by the inner loop.

  Args:
    model: the network (its Dense / conv layers get the maps).
    inner_lr: inner SGD step alpha.
    inner_steps: K, inner steps during meta-training.
    first_order: drop second-order terms (see `inner.gradient_descent`).
    remat: rematerialise the inner loop in the backward pass.
    objective: `"mse"`, `"cross_entropy"` or an `episodes.Objective`.

  Returns:
    A `MetaLearner` with theta `{"params": W_0, "tnet": {"T": [out, out] per layer}}`,
    identity maps at initialisation (where it is MAML exactly); `adapt` returns
    the unmapped network with weights `(A_K, c_K)`.

  References: Lee, Choi, ICML 2018, Sec. 3 (T-net).
  """
  return _learner(
    "tnet",
    model,
    masked=False,
    inner_lr=inner_lr,
    inner_steps=inner_steps,
    temperature=1.0,
    logit_init=0.0,
    first_order=first_order,
    remat=remat,
    objective=objective,
  )


def mtnet(
  model: nn.Module | Model,
  *,
  inner_lr: float = 0.01,
  inner_steps: int = 1,
  temperature: float = 1.0,
  logit_init: float = 0.0,
  first_order: bool = False,
  remat: bool = False,
  objective: str | ep.Objective = "mse",
) -> MetaLearner:
  """MT-Net: T-Net whose inner loop adapts only the output units a learned mask selects.

  Args:
    model, inner_lr, inner_steps, first_order, remat, objective: as `tnet`.
    temperature: the Gumbel-softmax temperature tau (1 in the authors' code).
    logit_init: initial mask logit zeta (0: each unit adapts with probability 1/2).

  Returns:
    A `MetaLearner` with theta `{"params", "tnet": {"T", "logits": zeta [out] per
    layer}}`; masks are drawn from the task's key in `adapt` and `meta_loss`
    (at test time too), and `meta_loss` reports their `adapted_fraction`.

  References: Lee, Choi, ICML 2018, Sec. 3 (MT-net) and Gumbel-softmax (Jang et
  al. 2017; Maddison et al. 2017).
  """
  return _learner(
    "mtnet",
    model,
    masked=True,
    inner_lr=inner_lr,
    inner_steps=inner_steps,
    temperature=temperature,
    logit_init=logit_init,
    first_order=first_order,
    remat=remat,
    objective=objective,
  )
