"""The coordinatewise LSTM optimizer of Andrychowicz et al. (2016) as an optax transformation.

One small LSTM, its weights shared by every coordinate of every parameter
array, is run on each coordinate independently (`vmap` over the flattened
coordinates of each leaf), each coordinate keeping its own hidden and cell
state. From the gradient `g` of one coordinate and that coordinate's state,

  x = preprocess(g),   (h, c) <- LSTM(x, (h, c)),   u = skip * g + scale * (w . h_top + b),

and the coordinate moves by `u` (`phi <- phi + u`, as optax applies updates).

What the paper says (arXiv:1606.04474v2):

- Sec. 2.1, Fig. 3: the optimizer "operates coordinatewise on the parameters
  of the objective function": an LSTM with shared parameters and separate
  hidden states per coordinate. Sec. 3 (first paragraph): "two-layer LSTMs
  with 20 hidden units in each layer", trained by truncated BPTT with Adam.
- Appendix A (gradient preprocessing): each gradient coordinate becomes two
  inputs, `(log|g| / p, sgn(g))` if `|g| >= exp(-p)` and `(-1, exp(p) * g)`
  otherwise, where `p > 0` controls how small gradients are disregarded;
  the paper uses `p = 10`.
- Sec. 3.2 (MNIST, and the later experiments): the Appendix A preprocessing,
  and the LSTM's outputs rescaled by 0.1 (the defaults here). Sec. 3.1 (the
  quadratics): "We have not used any preprocessing, nor postprocessing"
  (here: `preprocess=False`, `scale=1.0`).
- The authors' released code (github.com/deepmind/learning-to-learn,
  `util.get_default_net_config`) defaults to p = 5 ("k") and an output scale
  of 0.01; the paper's values are the defaults here.

Departures, each off or neutral at initialisation: the output layer also reads
the raw gradient through one scalar weight `skip` (zero from `lstm_init`, so
the update is the paper's linear read-out of the top hidden state). It makes
plain SGD a member of the family: `as_sgd(params, lr)` sets `w = 0, b = 0,
skip = -lr`, whose update is `-lr * g` bit for bit, whatever the LSTM's state.
`lstm_init(..., skip=False)` leaves the weight out altogether. The paper does
not state its initialisation; `lstm_init` documents the one used here.

References:
  Andrychowicz, Denil, Gómez, Hoffman, Pfau, Schaul, Shillingford, de Freitas.
  Learning to learn by gradient descent by gradient descent. NeurIPS 2016
  (Sec. 2.1, Sec. 3, Appendix A).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from metalearn.inner.gradient import sgd as checked_sgd
from metalearn.inner.learned import LearnedUpdate, fixed
from metalearn.types import Params, PRNGKey, PyTree

LSTMParams = PyTree  # {"layer_0": {"w_x", "w_h", "b"}, ..., "output": {"w", "b"[, "skip"]}}


class LSTMState(NamedTuple):
  """The per-coordinate state of the LSTM optimizer.

  Attributes:
    hidden: one PyTree per LSTM layer, shaped like the optimizee's params
      with a trailing hidden axis: a leaf `[*shape]` has `[*shape, H]`.
    cell: the cell states, shaped like `hidden`.
  """

  hidden: tuple[Params, ...]
  cell: tuple[Params, ...]


def preprocess_gradient(g: jax.Array, p: float) -> jax.Array:
  """Appendix A's log-magnitude and sign features of gradient coordinates.

  `(log|g| / p, sgn g)` where `|g| >= exp(-p)`, `(-1, exp(p) g)` elsewhere.
  Both branches are computed on safe values, so derivatives (second-order
  meta-gradients) are finite everywhere, `g = 0` included.

  Args:
    g: gradients, any shape `[...]`.
    p: `p > 0`; the paper uses 10.

  Returns:
    `[..., 2]`: the log feature, then the sign feature.
  """
  large = jnp.abs(g) >= math.exp(-p)
  safe_abs = jnp.where(large, jnp.abs(g), jnp.ones_like(g))
  log_feature = jnp.where(large, jnp.log(safe_abs) / p, -jnp.ones_like(g))
  sign_feature = jnp.where(large, jnp.sign(g), math.exp(p) * g)
  return jnp.stack([log_feature, sign_feature], axis=-1)


def _layer_names(params: LSTMParams) -> list[str]:
  names = sorted((k for k in params if k.startswith("layer_")), key=lambda k: int(k[6:]))
  if not names or "output" not in params:
    raise ValueError(
      "LSTM optimizer params need 'layer_0', ... and 'output' (from lstm_init), "
      f"got keys {sorted(params)}"
    )
  return names


def lstm_init(
  key: PRNGKey,
  *,
  hidden: int = 20,
  layers: int = 2,
  preprocess: bool = True,
  skip: bool = True,
  dtype: jnp.dtype | None = None,
) -> LSTMParams:
  """Weights of the coordinatewise LSTM optimizer.

  Gate weights are drawn `N(0, 1 / (inputs + hidden))`, biases are zero but
  the forget gate's, which is 1 (a common LSTM initialisation; the paper does
  not state one). The read-out `w` is drawn `N(0, 1 / hidden)`, `b = 0`, and
  the gradient skip weight (if any) is 0, so the update is the LSTM's alone.

  Args:
    key: PRNG key.
    hidden: H, units per LSTM layer (20 in the paper).
    layers: number of stacked LSTM layers (2 in the paper).
    preprocess: whether the optimizer will preprocess gradients (Appendix A:
      2 inputs per coordinate) or read them raw (1 input).
    skip: include the scalar weight on the raw gradient in the read-out.
    dtype: float dtype of the weights (default: JAX's default float).

  Returns:
    `{"layer_l": {"w_x": [in_l, 4H], "w_h": [H, 4H], "b": [4H]}, "output":
    {"w": [H], "b": [], "skip": []}}` with `in_0 = 2` (or 1) and `in_l = H`
    above; the gates are ordered input, forget, cell, output.
  """
  if not isinstance(hidden, int) or hidden < 1:
    raise ValueError(f"hidden must be an int >= 1, got {hidden!r}")
  if not isinstance(layers, int) or layers < 1:
    raise ValueError(f"layers must be an int >= 1, got {layers!r}")
  dtype = dtype or jnp.zeros([]).dtype
  keys = jax.random.split(key, layers + 1)
  params = {}
  inputs = 2 if preprocess else 1
  for i in range(layers):
    k_x, k_h = jax.random.split(keys[i])
    std = 1.0 / math.sqrt(inputs + hidden)
    bias = jnp.zeros([4 * hidden], dtype).at[hidden : 2 * hidden].set(1.0)
    params[f"layer_{i}"] = {
      "w_x": std * jax.random.normal(k_x, (inputs, 4 * hidden), dtype),
      "w_h": std * jax.random.normal(k_h, (hidden, 4 * hidden), dtype),
      "b": bias,
    }
    inputs = hidden
  output = {
    "w": jax.random.normal(keys[-1], (hidden,), dtype) / math.sqrt(hidden),
    "b": jnp.zeros([], dtype),
  }
  if skip:
    output["skip"] = jnp.zeros([], dtype)
  params["output"] = output
  return params


def as_sgd(params: LSTMParams, learning_rate: float) -> LSTMParams:
  """The same LSTM with its read-out set to SGD: `w = 0, b = 0, skip = -learning_rate`.

  Its update is `-learning_rate * g` exactly (the LSTM still runs, its
  output multiplied by zero weights), the update of `optax.sgd(learning_rate)`.
  """
  out = params["output"]
  dtype = out["w"].dtype
  output = {
    "w": jnp.zeros_like(out["w"]),
    "b": jnp.zeros_like(out["b"]),
    "skip": jnp.asarray(-learning_rate, dtype),
  }
  return {**params, "output": output}


def _cell(layer: PyTree, x: jax.Array, h: jax.Array, c: jax.Array):
  """One LSTM layer on one coordinate: `x [in]`, `h, c [H]` -> `(h, c)`."""
  z = x @ layer["w_x"] + h @ layer["w_h"] + layer["b"]
  i, f, g, o = jnp.split(z, 4)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return jax.nn.sigmoid(o) * jnp.tanh(c), c


def lstm_step(
  params: LSTMParams,
  g: jax.Array,
  hidden: tuple[jax.Array, ...],
  cell: tuple[jax.Array, ...],
  *,
  scale: float = 0.1,
  p: float = 10.0,
  preprocess: bool = True,
) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...]]:
  """The optimizer on ONE coordinate: gradient `g []`, states `[H]` per layer.

  Returns:
    `(u [], hidden, cell)`: the update of the coordinate and its new state.
  """
  x = preprocess_gradient(g, p) if preprocess else g[None]
  new_hidden, new_cell = [], []
  for name, h, c in zip(_layer_names(params), hidden, cell, strict=True):
    h, c = _cell(params[name], x, h, c)
    new_hidden.append(h)
    new_cell.append(c)
    x = h
  out = params["output"]
  u = scale * (x @ out["w"] + out["b"])
  if "skip" in out:
    # The skip term first: with w = 0 and b = 0 the LSTM adds an exact zero to it.
    u = out["skip"] * g + u
  return u, tuple(new_hidden), tuple(new_cell)


def lstm_optimizer(
  params: LSTMParams, *, scale: float = 0.1, p: float = 10.0, preprocess: bool = True
) -> optax.GradientTransformation:
  """The coordinatewise LSTM optimizer with weights `params`, as an optax transformation.

  Args:
    params: from `lstm_init` (traced when meta-learned: gradients flow into them).
    scale: output scale (0.1 in the paper's Sec. 3.2; 1.0, no
      postprocessing, for its quadratics).
    p: the preprocessing parameter of Appendix A (10 in the paper).
    preprocess: Appendix A's preprocessing (off for the paper's quadratics);
      must match `lstm_init(..., preprocess=)`.

  Returns:
    `GradientTransformation`: `init(params)` gives an `LSTMState` of zeros
    (per layer, a leaf `[*shape]` has hidden and cell `[*shape, H]`);
    `update(grads, state, params=None)` gives updates shaped like `grads`
    (to be added to the params) and the new state.

  Raises:
    ValueError: when `p <= 0`, or `params` were made for the other
      preprocessing setting.
  """
  if not p > 0:
    raise ValueError(f"p must be > 0, got {p}")
  names = _layer_names(params)
  inputs = params[names[0]]["w_x"].shape[0]
  if inputs != (2 if preprocess else 1):
    raise ValueError(
      f"the LSTM reads {inputs} input(s) per coordinate but preprocess={preprocess} "
      f"gives {2 if preprocess else 1}; make the params with lstm_init(preprocess={preprocess})"
    )
  size = params[names[0]]["w_h"].shape[0]

  def init(opt_params: Params) -> LSTMState:
    zeros = lambda x: jnp.zeros((*jnp.shape(x), size), jnp.result_type(x))
    state = tuple(jax.tree_util.tree_map(zeros, opt_params) for _ in names)
    return LSTMState(state, state)

  step = jax.vmap(
    lambda g, h, c: lstm_step(params, g, h, c, scale=scale, p=p, preprocess=preprocess)
  )

  def one_leaf(g, hidden, cell):
    shape = g.shape
    flat = lambda s: tuple(x.reshape(-1, size) for x in s)
    u, hidden, cell = step(g.reshape(-1), flat(hidden), flat(cell))
    back = lambda s: tuple(x.reshape(*shape, size) for x in s)
    return u.reshape(shape), back(hidden), back(cell)

  def update(grads, state: LSTMState, opt_params=None):
    del opt_params
    leaves, treedef = jax.tree_util.tree_flatten(grads)
    hidden = [treedef.flatten_up_to(h) for h in state.hidden]
    cell = [treedef.flatten_up_to(c) for c in state.cell]
    outs = [
      one_leaf(g, tuple(h[i] for h in hidden), tuple(c[i] for c in cell))
      for i, g in enumerate(leaves)
    ]
    updates = treedef.unflatten([u for u, _, _ in outs])
    per_layer = lambda j, k: treedef.unflatten([o[j][k] for o in outs])
    new_state = LSTMState(
      tuple(per_layer(1, k) for k in range(len(names))),
      tuple(per_layer(2, k) for k in range(len(names))),
    )
    return updates, new_state

  return optax.GradientTransformation(init, update)


def lstm_update(
  *,
  hidden: int = 20,
  layers: int = 2,
  scale: float = 0.1,
  p: float = 10.0,
  preprocess: bool = True,
  name: str = "lstm",
) -> LearnedUpdate:
  """The LSTM optimizer as a learned inner update (`inner.LearnedUpdate`).

  `algorithms.maml(model, inner_optimizer=lstm_update())` meta-learns the
  LSTM's weights (theta[name], from `lstm_init`) jointly with MAML's
  initialisation; the LSTM state starts at zero in every inner loop.

  References: Andrychowicz et al., NeurIPS 2016 (the optimizer); Finn et al.,
  ICML 2017 (MAML).
  """

  def init(key: PRNGKey, fast: Params) -> LSTMParams:
    leaves = jax.tree_util.tree_leaves(fast)
    dtype = leaves[0].dtype if leaves else None  # the LSTM in the adapted weights' dtype
    return lstm_init(key, hidden=hidden, layers=layers, preprocess=preprocess, dtype=dtype)

  transform = lambda theta: lstm_optimizer(theta, scale=scale, p=p, preprocess=preprocess)
  return LearnedUpdate(init, transform, name)


INNER_OPTIMIZERS = ("sgd", "adam", "lstm")
ADAM_EPS_ROOT = 1e-8  # inside sqrt(v + eps_root), as optax advises for meta-learning


def inner_optimizer(name: str, learning_rate: float | None = None) -> LearnedUpdate:
  """An inner update from its name, for a config (`--config.learner.inner_optimizer=lstm`).

  Args:
    name: `"sgd"` (MAML's SGD at `learning_rate`), `"adam"` (`optax.adam` at
      `learning_rate` with `eps_root=ADAM_EPS_ROOT`, its moments carried
      through the inner loop and reset for each task; meta-learns nothing)
      or `"lstm"` (`lstm_update()`, the LSTM optimizer with the paper's
      settings, meta-learned jointly with the initialisation; `learning_rate`
      is not used).
    learning_rate: the step size of `"sgd"` and `"adam"` (a learner's `inner_lr`).

  Raises:
    ValueError: for another name, or a missing step size.

  References: Andrychowicz et al., NeurIPS 2016; Kingma, Ba, ICLR 2015 (Adam).
  """
  if name == "lstm":
    return lstm_update()
  if name not in INNER_OPTIMIZERS:
    known = ", ".join(INNER_OPTIMIZERS)
    raise ValueError(f"unknown inner optimizer {name!r}; choose one of {known}")
  if learning_rate is None:
    raise ValueError(f"inner optimizer {name!r} needs a learning rate (inner_lr)")
  if name == "sgd":
    return fixed(checked_sgd(learning_rate))
  checked_sgd(learning_rate)  # the same check of the rate
  # eps_root > 0: the second-order meta-gradient through sqrt(v) is finite where
  # a gradient coordinate is exactly 0 (with eps_root = 0 it is NaN at step 1).
  return fixed(optax.adam(learning_rate, eps_root=ADAM_EPS_ROOT))
