r"""Truncation bias, measured: TBPTT against PES and ES on a learned step size (`step_size`).

Gradient descent with step size eta = exp(theta) on f(x) = (x_1^2 + 0.01 x_2^2) / 2
from x_0 = (1, 1), meta-loss the mean of f over T = 100 steps, truncations of
K = 10. For a grid of eta: the exact gradient and TBPTT's (closed forms),
and the mean ± 95% CI of PES (10 truncations) and of full-unroll ES over M
independent estimates of P antithetic pairs each. Then theta is meta-trained
from eta = 0.5 with Adam by each estimator; the JSON records where each ends
and its meta-loss there, next to the exact optimum.

  python -m benchmarks.lopt_truncation_bias \
      --out=docs/measurements/lopt_truncation_bias_cpu2.json \
      --figure=docs/measurements/lopt_truncation_bias_cpu2.png
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from metalearn.learned_optim import estimator, step_size

_OUT = flags.DEFINE_string("out", None, "JSON file to write")
_FIGURE = flags.DEFINE_string("figure", None, "PNG file to write")
_SAMPLES = flags.DEFINE_integer("samples", 400, "M, independent estimates per eta")
_PAIRS = flags.DEFINE_integer("pairs", 8, "P, antithetic pairs per estimate")
_SIGMA = flags.DEFINE_float("sigma", 0.003, "ES / PES perturbation scale (on log eta)")
_STEPS = flags.DEFINE_integer("train_steps", 300, "meta-training steps of each estimator")

UNROLL, TRUNCATION = 100, 10


def main(argv):
  del argv
  jax.config.update("jax_enable_x64", True)
  h, x0 = jnp.asarray(step_size.CURVATURES), jnp.ones(2)
  problem = step_size.step_size_problem(h, x0, unroll=UNROLL, truncation=TRUNCATION)
  exact = jax.jit(lambda t: step_size.closed_form(h, x0, t, unroll=UNROLL, truncation=TRUNCATION))
  grads = {
    name: estimator(name, problem, sigma=_SIGMA.value, num_pairs=_PAIRS.value)
    for name in ("tbptt", "es", "pes")
  }
  many = {
    name: jax.jit(jax.vmap(g, in_axes=(None, None, 0)))
    for name, g in grads.items()
    if name != "tbptt"
  }
  fine = np.linspace(0.5, 1.5, 201)
  curve = np.array([[float(v) for v in exact(np.log(e))] for e in fine])
  best = float(fine[np.argmin(curve[:, 0])])
  zero = float(fine[np.argmin(np.abs(curve[:, 2]) + 1e9 * (fine < 0.8))])
  points = []
  for i, eta in enumerate(np.linspace(0.6, 1.4, 9)):
    theta = jnp.log(jnp.asarray(eta))
    loss, true, truncated = (float(v) for v in exact(theta))
    row = {"eta": float(eta), "loss": loss, "exact": true, "tbptt": truncated}
    for name, fn in many.items():
      keys = jax.random.split(jax.random.key(1000 * i + len(name)), _SAMPLES.value)
      g = np.asarray(fn(theta, None, keys)[0])
      row[name] = {
        "mean": float(g.mean()),
        "ci95": float(1.96 * g.std(ddof=1) / np.sqrt(g.size)),
        "n": int(g.size),
      }
    points.append(row)
    print(
      f"eta {eta:.2f}: exact {true:+.3e}  tbptt {truncated:+.3e}  "
      f"pes {row['pes']['mean']:+.3e} ± {row['pes']['ci95']:.1e}  "
      f"es {row['es']['mean']:+.3e} ± {row['es']['ci95']:.1e}"
    )
  runs = {}
  for name, g in grads.items():
    opt = optax.adam(0.01)
    theta = jnp.log(jnp.asarray(0.5))
    state = opt.init(theta)

    @jax.jit
    def update(theta, state, key, g=g, opt=opt):
      d, _ = g(theta, None, key)
      u, state = opt.update(d, state, theta)
      return optax.apply_updates(theta, u), state

    trace = []
    for s in range(_STEPS.value):
      theta, state = update(theta, state, jax.random.key(10**6 + s))
      trace.append(float(jnp.exp(theta)))
    final_loss = float(exact(theta)[0])
    runs[name] = {"final_eta": trace[-1], "final_meta_loss": final_loss, "eta_trace": trace}
    print(f"{name}: meta-trained eta {trace[-1]:.4f}, meta-loss there {final_loss:.5f}")
  out = {
    "setting": {
      "curvatures": list(step_size.CURVATURES),
      "x0": [1.0, 1.0],
      "unroll": UNROLL,
      "truncation": TRUNCATION,
      "sigma_log_eta": _SIGMA.value,
      "pairs_per_estimate": _PAIRS.value,
      "estimates_per_eta": _SAMPLES.value,
      "meta_optimizer": "adam 0.01 on log eta, from eta = 0.5",
      "train_steps": _STEPS.value,
    },
    "exact_optimum_eta": best,
    "exact_optimum_meta_loss": float(curve[:, 0].min()),
    "tbptt_zero_eta": zero,
    "points": points,
    "meta_training": runs,
  }
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(out, f, indent=1)
  if _FIGURE.value:
    figure(fine, curve, points, runs, best, _FIGURE.value)


def figure(fine, curve, points, runs, best, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
  a.axhline(0, color="k", lw=0.5)
  a.plot(fine, curve[:, 1], "k-", label="exact dL/dlog eta")
  a.plot(fine, curve[:, 2], "C3--", label=f"TBPTT (K = {TRUNCATION})")
  eta = [p["eta"] for p in points]
  for i, name in enumerate(("pes", "es")):
    m = [p[name]["mean"] for p in points]
    ci = [p[name]["ci95"] for p in points]
    off = (i - 0.5) * 0.012
    a.errorbar(np.add(eta, off), m, ci, fmt="o", ms=3, color=f"C{i}", label=f"{name.upper()} ± 95%")
  a.axvline(best, color="gray", ls=":", lw=1)
  a.set_xlabel("step size eta")
  a.set_ylabel("meta-gradient")
  a.set_ylim(curve[:, 1].min() * 1.2, max(curve[:, 2].max(), 0) * 1.5 + 1e-4)
  a.legend(fontsize=7)
  a.set_title("meta-gradient (T = 100)", fontsize=9)
  for i, (name, r) in enumerate(runs.items()):
    b.plot(
      r["eta_trace"], color=["C3", "C1", "C0"][i], label=f"{name}: eta -> {r['final_eta']:.3f}"
    )
  b.axhline(best, color="gray", ls=":", lw=1, label=f"exact optimum {best:.3f}")
  b.set_xlabel("meta-step (Adam 0.01 on log eta)")
  b.set_ylabel("eta")
  b.legend(fontsize=7)
  b.set_title("meta-training the step size", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  app.run(main)
