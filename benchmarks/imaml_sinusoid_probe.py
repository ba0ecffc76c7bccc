r"""Short iMAML meta-training probes on sinusoid (K = 10) for a list of inner settings.

  python -m benchmarks.imaml_sinusoid_probe \
      --settings=0.01:10:1:5:0,0.01:10:1:5:1,0.02:25:10:5:0 [--steps=4000] [--out=FILE.json]

Each setting is `inner_lr:inner_steps:lam:cg_steps:damping[:inner_clip[:lam_damping]]`
(inner_clip: global-norm clipping of each inner gradient, off when left out or 0;
lam_damping: added to lam in the linear system only, 0 when left out). A probe meta-trains
iMAML (MLP 40-40, meta-batch 25, Adam 1e-3, seed 0) for `--steps` steps and
prints the last meta-loss, the last CG residual and the query MSE on 200
held-out tasks after 0, 1, 10 and K proximal inner steps; `--eval_every=N` adds
a trace line every N meta-steps (loss, CG residual, inner gradient norm at phi,
held-out MSE), and `--inner_optimizer=adam` swaps the inner SGD for Adam at the
same rate (`newton`: damped Newton-CG steps, `--newton_cg_steps` CG iterations
each; inner_lr is then unused). docs/results.md uses it to show where iMAML on sinusoid stands.
"""

import time

import jax
import numpy as np
import optax
from absl import app, flags

from benchmarks import common
from metalearn import algorithms, core, evaluation
from metalearn import episodes as ep
from metalearn.data.sinusoid import Sinusoid
from metalearn.models import MLP

_SETTINGS = flags.DEFINE_list(
  "settings",
  ["0.01:10:1:5:0", "0.01:10:1:5:1"],
  "inner_lr:inner_steps:lam:cg_steps:damping[:inner_clip[:lam_damping]]",
)
_STEPS = flags.DEFINE_integer("steps", 4000, "meta-steps per probe")
_EVAL_EVERY = flags.DEFINE_integer(
  "eval_every", 0, "also evaluate and print a trace line every this many meta-steps (0: off)"
)
_OPTIMIZER = flags.DEFINE_enum(
  "inner_optimizer",
  "sgd",
  ["sgd", "adam", "newton"],
  "inner optimizer (adam: optax.adam(inner_lr); newton: damped Newton-CG, inner_lr unused)",
)
_NEWTON_CG = flags.DEFINE_integer("newton_cg_steps", 10, "CG iterations per Newton step")
_OUT = flags.DEFINE_string("out", None, "write the results as JSON here")


def probe(lr, steps, lam, cg_steps, damping, clip=0.0, lam_damping=0.0):
  train, test = Sinusoid(10, 10), Sinusoid(10, 100)
  eval_steps = tuple(sorted({0, 1, 10, steps}))
  kwargs = dict(
    inner_lr=lr,
    lam=lam,
    cg_steps=cg_steps,
    damping=damping,
    lam_damping=lam_damping,
    inner_clip=clip,
    inner_optimizer=optax.adam(lr) if _OPTIMIZER.value == "adam" else None,
  )
  if _OPTIMIZER.value == "newton":
    kwargs.update(inner_solver="newton", newton_cg_steps=_NEWTON_CG.value)
  learner = algorithms.imaml(MLP(), inner_steps=steps, **kwargs)
  curve = evaluation.curve(algorithms.imaml, eval_steps, MLP(), **kwargs)
  opt = optax.adam(1e-3)
  example = ep.task(train.sample(np.random.default_rng(0), 1), 0)
  state = core.init_state(learner, opt, jax.random.PRNGKey(0), example)
  step = jax.jit(core.make_meta_step(learner, opt))
  evaluate = jax.jit(core.make_eval_step(evaluation.regression(curve)))
  held_out = [test.sample(np.random.default_rng(5), 200)]
  start = time.time()
  nonfinite, trace = 0, []
  for i in range(_STEPS.value):
    state, metrics = step(state, train.sample(np.random.default_rng([1, i]), 25))
    nonfinite += int(metrics["nonfinite"])
    if _EVAL_EVERY.value and (i + 1) % _EVAL_EVERY.value == 0 and i + 1 < _STEPS.value:
      summary = core.evaluate(evaluate, state.theta, held_out, jax.random.PRNGKey(1))
      trace.append(
        {
          "step": i + 1,
          "nonfinite_steps": nonfinite,
          **{k: float(metrics[k]) for k in ("loss", "cg_residual", "inner_grad_norm")},
          "mse": {k: v["mean"] for k, v in summary.items()},
        }
      )
      print("  ", trace[-1], flush=True)
  summary = core.evaluate(evaluate, state.theta, held_out, jax.random.PRNGKey(1))
  return {
    "inner_lr": lr,
    "inner_steps": steps,
    "lam": lam,
    "cg_steps": cg_steps,
    "damping": damping,
    "inner_clip": clip,
    "lam_damping": lam_damping,
    "inner_optimizer": _OPTIMIZER.value,
    "newton_cg_steps": _NEWTON_CG.value if _OPTIMIZER.value == "newton" else None,
    "nonfinite_steps": nonfinite,
    "loss": float(metrics["loss"]),
    "cg_residual": float(metrics["cg_residual"]),
    "inner_grad_norm": float(metrics["inner_grad_norm"]),
    "mse": {k: v["mean"] for k, v in summary.items()},
    "trace": trace,
    "seconds": time.time() - start,
  }


def main(argv):
  del argv
  rows = []
  for s in _SETTINGS.value:
    lr, steps, lam, cg_steps, *rest = s.split(":")
    row = probe(float(lr), int(steps), float(lam), int(cg_steps), *map(float, rest))
    print(row, flush=True)
    rows.append(row)
  common.write_json(
    _OUT.value, {"machine": common.machine(), "steps": _STEPS.value, "results": rows}
  )


if __name__ == "__main__":
  app.run(main)
