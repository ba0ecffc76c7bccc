"""Ambiguous sinusoid-or-line tasks: likelihood and the kinds of function a run's samples take.

  python -m benchmarks.ambiguity --workdirs=runs/platipus_sl,runs/maml_noise_sl \
      [--num_tasks=1000] [--steps=5] [--out=FILE.json] [--figure=FILE.png]

For each sinusoid run trained on `functions = "sine_line"` tasks
(`experiments/configs/sinusoid.py:platipus`, or `:llama` with that family),
draws `--num_tasks` held-out tasks (5 noisy support points, the run's query
count) and reports, after `--steps` inner steps:

- `loglik`: the log-likelihood per query point of the run's predictive, the
  equal mixture over its samples `log mean_s prod_t N(y_t; f_s(x_t), s^2)` /
  n (`metalearn.probabilistic.log_likelihood`; for K > 1 samples a Monte-Carlo
  estimate, biased low), over all tasks and over the **ambiguous** ones;
- `both_kinds`: the fraction of tasks whose sampled functions include both a
  line-like and a sinusoid-like one.

Definitions (ours; the paper shows such samples but defines no test):

- A function is *line-like* when, on a grid of 200 points over [-5, 5], the
  least-squares fit by `a x + b` leaves a smaller residual than the fit by
  `c sin x + d cos x` (the family's sinusoids, `A sin(x - phase)`, span
  exactly the latter), and *sinusoid-like* otherwise.
- A task is *ambiguous* when both fits pass within `2 * noise` (RMS) of its
  5 support points: the data cannot tell its kind.

References:
  Finn, Xu, Levine. Probabilistic Model-Agnostic Meta-Learning. NeurIPS 2018, Sec. 5.1, Fig. 3.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import train
from metalearn import probabilistic, training
from metalearn.data.sinusoid import SineOrLine

GRID = np.linspace(-5.0, 5.0, 200)


def fit_rms(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """RMS residuals of the least-squares line and sinusoid fits of `y [..., m]` at `x [m]`."""

  def rms(basis):  # basis [m, 2]
    coef, *_ = np.linalg.lstsq(basis, np.moveaxis(y, -1, 0).reshape(len(x), -1), rcond=None)
    residual = basis @ coef - np.moveaxis(y, -1, 0).reshape(len(x), -1)
    return np.sqrt(np.mean(residual**2, axis=0)).reshape(y.shape[:-1])

  line = np.stack([x, np.ones_like(x)], axis=1)
  sine = np.stack([np.sin(x), np.cos(x)], axis=1)
  return rms(line), rms(sine)


def is_line_like(functions: np.ndarray) -> np.ndarray:
  """`[...]` bool: functions sampled on `GRID` (`[..., 200]`) closer to a line than a sinusoid."""
  line, sine = fit_rms(GRID, functions)
  return line < sine


def is_ambiguous(x: np.ndarray, y: np.ndarray, noise: float) -> np.ndarray:
  """`[T]` bool: support sets `x, y [T, K]` fitted within 2 noise RMS by a line and a sinusoid."""
  out = []
  for xi, yi in zip(x, y, strict=True):
    line, sine = fit_rms(xi, yi)
    out.append(bool(line <= 2 * noise and sine <= 2 * noise))
  return np.asarray(out)


def score_run(workdir: str, *, num_tasks: int, steps: int, seed: int = 12345) -> dict:
  """Log-likelihood, sample kinds and task ambiguity of one run (see the module docstring)."""
  config = train.load_config(workdir)
  if config.get("functions", "sine") != "sine_line":
    raise ValueError(
      f"{workdir}: trained on functions={config.get('functions', 'sine')!r}, not 'sine_line'"
    )
  learner = train.build_learner(config, inner_steps=steps)
  theta = training.restore_theta(workdir, learner, train.example_task(config), config.seed)
  sampler = SineOrLine(shots=config.shots, queries=config.eval_queries)
  rng = np.random.default_rng(seed)
  kinds = sampler.tasks(rng, num_tasks)
  batch = sampler.episodes_for(rng, *kinds)
  grid = jnp.asarray(GRID[:, None], jnp.float32)

  @jax.jit
  def one(task, key):
    adapted = learner.adapt(theta, task.support, key)
    pred = adapted(task.query.x)
    n = jnp.sum(task.query.mask)
    return probabilistic.log_likelihood(pred, task.query) / n, adapted(grid).mean

  keys = jax.random.split(jax.random.PRNGKey(seed), num_tasks)
  loglik, functions = jax.lax.map(lambda a: one(*a), (batch, keys))
  loglik, functions = np.asarray(loglik), np.asarray(functions)  # [T], [T, S, 200]
  line = is_line_like(functions)
  both = line.any(axis=1) & (~line).any(axis=1)
  ambiguous = is_ambiguous(batch.support.x[..., 0], batch.support.y[..., 0], sampler.noise)

  def stat(values):
    values = np.asarray(values, np.float64)
    ci = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": float(values.mean()), "ci95": float(ci), "n": len(values)}

  is_sine = np.asarray(kinds[0])
  return {
    "workdir": workdir,
    "method": config.method,
    "steps": steps,
    "samples": int(functions.shape[1]),
    "loglik": stat(loglik),
    "loglik_ambiguous": stat(loglik[ambiguous]),
    "both_kinds": stat(both),
    "both_kinds_ambiguous": stat(both[ambiguous]),
    "ambiguous_fraction": float(ambiguous.mean()),
    "line_like_given_line_task": float(line[~is_sine].mean()),
    "line_like_given_sine_task": float(line[is_sine].mean()),
    "_figure": (batch, functions, ambiguous, kinds),
  }


def figure(path: str, runs: list[dict], *, count: int = 3) -> None:
  """The first `count` ambiguous tasks: support points, truth and each run's sampled functions."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  batch, _, ambiguous, kinds = runs[0]["_figure"]
  picks = np.flatnonzero(ambiguous)[:count]
  fig, axes = plt.subplots(
    len(runs), len(picks), figsize=(4 * len(picks), 3 * len(runs)), squeeze=False
  )
  for r, run in enumerate(runs):
    functions = run["_figure"][1]
    for c, i in enumerate(picks):
      ax = axes[r, c]
      truth = SineOrLine.function(*(k[i] for k in kinds), GRID)
      ax.plot(GRID, truth, color="black", lw=2, label="truth")
      for s in range(functions.shape[1]):
        ax.plot(GRID, functions[i, s], color="tab:blue", lw=0.8, alpha=0.6)
      ax.scatter(
        batch.support.x[i, :, 0], batch.support.y[i, :, 0], color="tab:red", marker="^", zorder=5
      )
      ax.set_title(f"{os.path.basename(run['workdir'].rstrip('/'))}, task {i}", fontsize=9)
      ax.set_ylim(-8, 8)
  fig.suptitle("ambiguous tasks: sampled functions after adaptation (support points in red)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdirs", required=True, help="comma-separated sine_line runs")
  parser.add_argument("--num_tasks", type=int, default=1000)
  parser.add_argument("--steps", type=int, default=5, help="inner steps at test time")
  parser.add_argument("--out", default="")
  parser.add_argument("--figure", default="")
  args = parser.parse_args(argv)
  if args.num_tasks < 2:
    parser.error(f"--num_tasks={args.num_tasks}: must be >= 2")
  runs = [
    score_run(w, num_tasks=args.num_tasks, steps=args.steps) for w in args.workdirs.split(",")
  ]
  print(
    "| run | samples | loglik (all) | loglik (ambiguous) | both kinds (all) "
    "| both kinds (ambiguous) |"
  )
  print("|---|---|---|---|---|---|")
  for r in runs:
    cells = [
      f"{r[k]['mean']:.3f} ± {r[k]['ci95']:.3f}"
      for k in ("loglik", "loglik_ambiguous", "both_kinds", "both_kinds_ambiguous")
    ]
    print(f"| {r['method']} ({r['workdir']}) | {r['samples']} | " + " | ".join(cells) + " |")
  print(f"ambiguous tasks: {runs[0]['ambiguous_fraction']:.3f} of {args.num_tasks}")
  if args.figure:
    figure(args.figure, runs)
    print(f"wrote {args.figure}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump([{k: v for k, v in r.items() if not k.startswith("_")} for r in runs], f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
