"""The fast convolution and pooling equal the plain operations, derivatives included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn.models import Conv4, ops


def _plain_conv(x, k):
  return jax.lax.conv_general_dilated(
    x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _loss(conv):
  # A non-linear scalar of the convolution, so second derivatives are non-trivial.
  return lambda x, k: jnp.sum(jnp.sin(conv(x, k)) * jnp.cos(x[..., :1]))


@pytest.mark.parametrize("kernel_shape", [(3, 3, 4, 5), (1, 1, 3, 2), (5, 3, 2, 3)])
def test_conv2d_same_matches_lax_to_second_order(x64, kernel_shape):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 7, 6, kernel_shape[2])))
  k = jnp.asarray(rng.standard_normal(kernel_shape))
  np.testing.assert_allclose(ops.conv2d_same(x, k), _plain_conv(x, k), rtol=1e-12, atol=1e-12)
  plain, fast = _loss(_plain_conv), _loss(ops.conv2d_same)
  for got, want in zip(jax.grad(fast, (0, 1))(x, k), jax.grad(plain, (0, 1))(x, k), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)

  # Second order, reverse over reverse (what MAML's meta-gradient does).
  def grad_norm(loss):
    return lambda x, k: sum(jnp.sum(g**2) for g in jax.grad(loss, (0, 1))(x, k))

  for got, want in zip(
    jax.grad(grad_norm(fast), (0, 1))(x, k), jax.grad(grad_norm(plain), (0, 1))(x, k), strict=True
  ):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_conv2d_same_rejects_even_kernels():
  with pytest.raises(ValueError, match="odd kernel"):
    ops.conv2d_same(jnp.zeros((1, 4, 4, 1)), jnp.zeros((2, 2, 1, 1)))


@pytest.mark.parametrize("size", [(6, 6), (7, 5)])
def test_max_pool_2x2_matches_flax(x64, size):
  x = jnp.asarray(np.random.default_rng(1).standard_normal((3, *size, 4)))  # no ties
  want = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  np.testing.assert_array_equal(ops.max_pool_2x2(x), want)
  cot = jnp.asarray(np.random.default_rng(2).standard_normal(want.shape))
  got_grad = jax.grad(lambda x: jnp.sum(ops.max_pool_2x2(x) * cot))(x)
  want_grad = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), (2, 2), "VALID") * cot))(x)
  np.testing.assert_array_equal(got_grad, want_grad)


def test_conv4_parameters_load_into_flax_conv_layout():
  """Conv4's convolutions keep `flax.linen.Conv`'s parameter names and shapes."""
  x = jnp.zeros((2, 28, 28, 1))
  params = Conv4(ways=5).init(jax.random.PRNGKey(0), x)["params"]
  assert params["conv_0"]["kernel"].shape == (3, 3, 1, 64)
  assert params["conv_3"]["kernel"].shape == (3, 3, 64, 64)
  flax_conv = nn.Conv(64, (3, 3), padding="SAME", use_bias=False)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 28, 28, 1)), jnp.float32)
  np.testing.assert_allclose(
    flax_conv.apply({"params": params["conv_0"]}, x),
    ops.conv2d_same(x, params["conv_0"]["kernel"]),
    rtol=1e-5,
    atol=1e-5,
  )


def test_implicit_system_hessian_products_through_conv4(x64):
  """iMAML's H v works through Conv4's reverse-mode-only convolution (reverse over reverse)."""
  from metalearn.inner import implicit
  from metalearn.models.conv4 import BatchStatNorm

  class PlainConv4(nn.Module):
    @nn.compact
    def __call__(self, x):
      for i in range(2):
        x = nn.Conv(4, (3, 3), padding="SAME", use_bias=False, name=f"conv_{i}")(x)
        x = ops.max_pool_2x2(nn.relu(BatchStatNorm(name=f"norm_{i}")(x)))
      return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))

  x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 8, 8, 1)))
  y = jnp.arange(6) % 3
  fast = Conv4(ways=3, channels=4, blocks=2)
  params = fast.init(jax.random.PRNGKey(0), x)["params"]

  def loss(model):
    return lambda p: -jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, x))[jnp.arange(6), y])

  v = jax.tree_util.tree_map(
    lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape), params
  )
  g_fast, matvec_fast = implicit.implicit_system(loss(fast), params, 2.0)
  g_plain, matvec_plain = implicit.implicit_system(loss(PlainConv4()), params, 2.0)
  for got, want in zip(
    jax.tree_util.tree_leaves((g_fast, matvec_fast(v))),
    jax.tree_util.tree_leaves((g_plain, matvec_plain(v))),
    strict=True,
  ):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_relation_module_score_equals_scoring_every_pair():
  """`score` (first convolution per map) gives `__call__`'s scores on the concatenated pairs."""
  from metalearn.models.relation import RelationModule

  ways, m = 3, 4
  key1, key2, key3 = jax.random.split(jax.random.PRNGKey(0), 3)
  classes = jax.random.normal(key1, (ways, 7, 7, 8))
  queries = jax.random.normal(key2, (m, 7, 7, 8))
  module = RelationModule(channels=6, hidden=5)
  pairs = jnp.concatenate(
    [
      jnp.broadcast_to(classes[None], (m, *classes.shape)),
      jnp.broadcast_to(queries[:, None], (m, ways, *queries.shape[1:])),
    ],
    axis=-1,
  ).reshape(m * ways, 7, 7, 16)
  params = module.init(key3, pairs)
  want = module.apply(params, pairs).reshape(m, ways)
  got = module.apply(params, classes, queries, method=RelationModule.score)
  assert got.shape == (m, ways)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert set(params["params"]) == {
    "block_0_conv",
    "block_0_norm",
    "block_1_conv",
    "block_1_norm",
    "fc",
    "out",
  }
