r"""Runs every method at K = 5, 10, 20 on sinusoid and writes the results table.

  python -m experiments.sinusoid_table --root=runs/sinusoid_table \
      [--methods=maml,fomaml --shots=10 --num_steps=70000]

Each run is `train_and_evaluate` in `<root>/<method>_k<K>` (resumable: a run
whose eval.json exists is not trained again). Prints a markdown table of query
MSE ± 95% CI after 1 and 10 inner steps and writes it, with the raw numbers, to
`<root>/table.md` and `<root>/table.json`.
"""

import json
import os
import time

from absl import app, flags, logging

from experiments import train
from experiments.configs import sinusoid

_ROOT = flags.DEFINE_string("root", "runs/sinusoid_table", "folder holding one run per row")
_METHODS = flags.DEFINE_list(
  "methods",
  ["maml", "fomaml", "reptile", "metasgd", "anil", "metacurvature", "pretrain"],
  "methods to run",
)
_SHOTS = flags.DEFINE_list("shots", ["5", "10", "20"], "support sizes K")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 70_000, "meta-steps per run")
_SMOKE = flags.DEFINE_bool("smoke", False, "use the smoke config (a few steps)")


def _cell(metrics, name):
  m = metrics[name]
  bad = f" ({m['nonfinite']} non-finite)" if m["nonfinite"] else ""
  fmt = (lambda v: f"{v:.3f}") if abs(m["mean"]) < 1e3 else (lambda v: f"{v:.2g}")
  return f"{fmt(m['mean'])} ± {fmt(m['ci95'])}{bad}"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  rows = []
  for k in [int(s) for s in _SHOTS.value]:
    for method in _METHODS.value:
      workdir = os.path.join(_ROOT.value, f"{method}_k{k}")
      config = sinusoid.get_config(f"{method},smoke" if _SMOKE.value else method)
      with config.unlocked():
        config.shots, config.baseline = k, False
        if not _SMOKE.value:
          config.num_steps = _NUM_STEPS.value
      done = os.path.join(workdir, "eval.json")
      seconds = None
      if not os.path.exists(done):
        start = time.time()
        train.train_and_evaluate(config, workdir)
        seconds = time.time() - start
      with open(done) as f:
        result = json.load(f)
      rows.append(
        {
          "method": method,
          "shots": k,
          "steps": result["step"],
          "seconds": seconds,
          "metrics": result["metrics"],
        }
      )
  lines = [
    "| method | K | steps | MSE after 1 step | MSE after 10 steps |",
    "|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['method']} | {r['shots']} | {r['steps']} | "
      f"{_cell(r['metrics'], 'mse@1')} | {_cell(r['metrics'], 'mse@10')} |"
    )
  table = "\n".join(lines)
  print(table)
  os.makedirs(_ROOT.value, exist_ok=True)
  with open(os.path.join(_ROOT.value, "table.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(_ROOT.value, "table.json"), "w") as f:
    json.dump(rows, f, indent=2)


if __name__ == "__main__":
  app.run(main)
