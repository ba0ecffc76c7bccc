"""Neural processes: conditional (CNP), latent (NP, by ELBO or ML) and attentive (ACNP, ANP).

A neural process maps a context set C = {(x_i, y_i)} and target inputs x_t to
a predictive over y_t. The deterministic path encodes each context pair,
h_i = enc(x_i, y_i), and aggregates them: the mean r = (1/|C|) sum_i h_i
(Garnelo et al., 2018a), or, attentive, r_t = MultiHead(q(x_t), k(x_i), h_i)
with 8 heads (Kim et al., 2019, Sec. 3). A latent path (Garnelo et al.,
2018b) adds z ~ N(mu_z, sigma_z) with (mu_z, sigma_z) = g(mean_i s(x_i, y_i)),
sigma_z = 0.1 + 0.9 sigmoid. The decoder gives
p(y_t | x_t, r_t, z) = N(mu_t, sigma_t), sigma_t = 0.1 + 0.9 softplus.

Objectives, per target point (the benchmark divides by the number of targets):

- CNP: -(1/T) sum_t log p(y_t | x_t, C).
- ELBO: -(1/T) [E_{q(z|C u T)} sum_t log p(y_t | z, C) - KL(q(z|C u T) || q(z|C))],
  the latent encoder of C standing in for the prior (Garnelo et al., 2018b, Eq. 6).
- ML: -(1/T) log (1/K) sum_k prod_t p(y_t | z_k, C), z_k ~ q(z|C): the
  Monte-Carlo log-likelihood the `neuralprocesses` benchmark trains latent
  models with (Foong et al., 2020, Sec. 3; importance sampling with the
  prior as proposal), a lower bound that tightens as K grows.

`adapt(theta, context, key)` returns a predictor `x [T, 1] -> Predictive`
(`metalearn.probabilistic`): one Gaussian for the CNPs, a mixture over
`num_eval_samples` draws of z for the latent models.

References:
  Garnelo et al. Conditional Neural Processes. ICML 2018 (2018a).
  Garnelo et al. Neural Processes. ICML 2018 workshop, arXiv:1807.01622 (2018b).
  Kim et al. Attentive Neural Processes. ICLR 2019.
  Foong et al. Meta-Learning Stationary Stochastic Process Prediction with
  Convolutional Neural Processes. NeurIPS 2020 (the ML objective).
  Bruinsma (2022), thesis ch. 6, and the `neuralprocesses` package (architecture:
  width 256, encoder 3 layers, decoder 6 layers, 8 heads, latent dimension 256).
"""

from __future__ import annotations

import functools

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from metalearn import episodes as ep
from metalearn import probabilistic
from metalearn.core import MetaLearner, predictor
from metalearn.models.mlp import MLP

OBJECTIVES = ("ml", "elbo")


def _xy(split: ep.Split) -> jax.Array:
  return jnp.concatenate([split.x, split.y], axis=-1)


def masked_mean(h: jax.Array, mask: jax.Array) -> jax.Array:
  """`sum_i mask_i h_i / max(sum_i mask_i, 1)`: `h [n, d]` -> `[d]` (zeros for an empty set)."""
  m = mask.astype(h.dtype)[:, None]
  return jnp.sum(h * m, axis=0) / jnp.maximum(jnp.sum(m), 1.0)


class NeuralProcessNet(nn.Module):
  """The networks of a neural process; `latent = 0` for a conditional NP.

  Attributes:
    width: hidden width of every MLP.
    embedding: dimension of r (and of the attention's queries and keys).
    encoder_layers: layers of each encoder MLP.
    decoder_layers: layers of the decoder MLP.
    latent: dimension of z (0: no latent path).
    attentive: cross-attention on the deterministic path instead of the mean.
    num_heads: attention heads.
  """

  width: int = 256
  embedding: int = 256
  encoder_layers: int = 3
  decoder_layers: int = 6
  latent: int = 0
  attentive: bool = False
  num_heads: int = 8

  def setup(self):
    hidden = lambda n: (self.width,) * (n - 1)
    self.det_encoder = MLP(hidden(self.encoder_layers), self.embedding)
    if self.attentive:
      self.x_embed = MLP(hidden(self.encoder_layers), self.embedding)
      self.attention = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=self.embedding, out_features=self.embedding
      )
    if self.latent:
      self.lat_encoder = MLP(hidden(self.encoder_layers), self.width)
      self.lat_head = MLP(hidden(self.encoder_layers), 2 * self.latent)
    self.decoder = MLP(hidden(self.decoder_layers), 2)

  def representation(self, context: ep.Split, x: jax.Array) -> jax.Array:
    """The deterministic path at the targets: `r [T, embedding]`."""
    h = self.det_encoder(_xy(context))  # [C, E]
    if not self.attentive:
      return jnp.broadcast_to(masked_mean(h, context.mask), (x.shape[0], self.embedding))
    mask = jnp.broadcast_to(context.mask[None, None, :], (1, x.shape[0], h.shape[0]))
    r = self.attention(self.x_embed(x), self.x_embed(context.x), h, mask=mask)
    return r * jnp.any(context.mask).astype(r.dtype)  # no context: r = 0, as the mean gives

  def latent_dist(self, split: ep.Split) -> distrax.MultivariateNormalDiag:
    """q(z | split) = N(mu_z, diag sigma_z^2), sigma_z = 0.1 + 0.9 sigmoid."""
    s = masked_mean(self.lat_encoder(_xy(split)), split.mask)
    mu, raw = jnp.split(self.lat_head(nn.relu(s)), 2)
    return distrax.MultivariateNormalDiag(mu, 0.1 + 0.9 * jax.nn.sigmoid(raw))

  def decode(self, x: jax.Array, r: jax.Array, z: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """`(mu [T], sigma [T])` of p(y_t | x_t, r_t, z), sigma = 0.1 + 0.9 softplus."""
    parts = [x, r] if z is None else [x, r, jnp.broadcast_to(z, (x.shape[0], z.shape[-1]))]
    mu, raw = jnp.split(self.decoder(jnp.concatenate(parts, axis=-1)), 2, axis=-1)
    return mu[:, 0], 0.1 + 0.9 * jax.nn.softplus(raw[:, 0])

  def __call__(self, context: ep.Split, x: jax.Array):
    """Touches every parameter (for `init`)."""
    z = self.latent_dist(context).mean() if self.latent else None
    return self.decode(x, self.representation(context, x), z)


def _target_logp(net, theta, context, target, zs):
  """`[K]` sum over real targets of log p(y_t | z_k, C) for latent draws `zs [K, L]` (or None)."""
  r = net.apply(theta, context, target.x, method="representation")

  def one(z):
    mu, sigma = net.apply(theta, target.x, r, z, method="decode")
    logp = distrax.Normal(mu, sigma).log_prob(target.y[:, 0])
    return jnp.sum(jnp.where(target.mask, logp, 0.0))

  return one(None)[None] if zs is None else jax.vmap(one)(zs)


def _predict(net, theta, context, zs, x):
  r = net.apply(theta, context, x, method="representation")
  if zs is None:
    return probabilistic.gaussian(*net.apply(theta, x, r, None, method="decode"))
  mean, scale = jax.vmap(lambda z: net.apply(theta, x, r, z, method="decode"))(zs)
  return probabilistic.Predictive(mean, scale)


def _learner(net, loss, num_eval_samples, name) -> MetaLearner:
  predict = functools.partial(_predict, net)

  def init(key, task):
    return net.init(key, task.context, task.target.x)

  def adapt(theta, context, key):
    if not net.latent:
      return predictor(predict, theta, context, None)
    zs = net.apply(theta, context, method="latent_dist").sample(
      seed=key, sample_shape=num_eval_samples
    )
    return predictor(predict, theta, context, zs)

  return MetaLearner(init, adapt, loss, name=name)


def _check(**sizes):
  for name, value in sizes.items():
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def cnp(
  *,
  width: int = 256,
  embedding: int = 256,
  encoder_layers: int = 3,
  decoder_layers: int = 6,
  attentive: bool = False,
  num_heads: int = 8,
) -> MetaLearner:
  """A conditional neural process (attentive: Kim et al.'s deterministic path, `num_heads` heads).

  theta is the flax params of `NeuralProcessNet`; the meta-loss is the
  negative log-likelihood per target point.
  """
  _check(width=width, embedding=embedding, encoder_layers=encoder_layers)
  _check(decoder_layers=decoder_layers, num_heads=num_heads)
  net = NeuralProcessNet(width, embedding, encoder_layers, decoder_layers, 0, attentive, num_heads)

  def meta_loss(theta, task, key):
    del key
    n = jnp.maximum(jnp.sum(task.target.mask), 1)
    nll = -_target_logp(net, theta, task.context, task.target, None)[0] / n
    return nll, {"nll": nll}

  return _learner(net, meta_loss, 1, "acnp" if attentive else "cnp")


def np_latent(
  *,
  width: int = 256,
  embedding: int = 256,
  encoder_layers: int = 3,
  decoder_layers: int = 6,
  latent: int = 256,
  attentive: bool = False,
  num_heads: int = 8,
  objective: str = "ml",
  num_samples: int = 20,
  num_eval_samples: int = 512,
) -> MetaLearner:
  """A neural process with a latent path, trained by the ML objective or the ELBO.

  Args:
    width, embedding, encoder_layers, decoder_layers, num_heads: as `cnp`.
    latent: dimension of z.
    attentive: cross-attention on the deterministic path (ANP).
    objective: `"ml"` (Monte-Carlo log-likelihood, z from q(z|C)) or `"elbo"`.
    num_samples: draws of z per task in the meta-loss (the benchmark's 20).
    num_eval_samples: draws of z in the predictive `adapt` returns (512 in the
      benchmark's evaluation).

  Returns:
    A `MetaLearner`; its metrics are `nll` (the loss) and, for the ELBO,
    `kl_term` (KL(q(z|C u T) || q(z|C)) per target point).
  """
  _check(width=width, embedding=embedding, encoder_layers=encoder_layers, latent=latent)
  _check(decoder_layers=decoder_layers, num_heads=num_heads, num_samples=num_samples)
  _check(num_eval_samples=num_eval_samples)
  if objective not in OBJECTIVES:
    raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
  net = NeuralProcessNet(
    width, embedding, encoder_layers, decoder_layers, latent, attentive, num_heads
  )

  def meta_loss(theta, task, key):
    n = jnp.maximum(jnp.sum(task.target.mask), 1)
    prior = net.apply(theta, task.context, method="latent_dist")
    if objective == "ml":
      zs = prior.sample(seed=key, sample_shape=num_samples)
      logp = _target_logp(net, theta, task.context, task.target, zs)
      nll = -(jax.nn.logsumexp(logp) - jnp.log(num_samples)) / n
      return nll, {"nll": nll}
    posterior = net.apply(theta, ep.merge(task.context, task.target), method="latent_dist")
    zs = posterior.sample(seed=key, sample_shape=num_samples)
    kl = posterior.kl_divergence(prior) / n
    nll = -jnp.mean(_target_logp(net, theta, task.context, task.target, zs)) / n + kl
    return nll, {"nll": nll, "kl_term": kl}

  name = ("anp" if attentive else "np") + f"_{objective}"
  return _learner(net, meta_loss, num_eval_samples, name)


REGISTRY = {
  "cnp": cnp,
  "acnp": lambda **kw: cnp(attentive=True, **kw),
  "np": np_latent,
  "anp": lambda **kw: np_latent(attentive=True, **kw),
}
