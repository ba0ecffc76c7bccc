r"""Paired differences of a lopt run's loss curves: the LSTM against each baseline, task by task.

Every optimizer of a `experiments/families/lopt.py` run was run on the same
held-out tasks (`<workdir>/curves.npz`), so the LSTM's advantage is measured
per task: the mean of `loss_lstm - loss_baseline` at each step k with its 95%
interval, and the fraction of tasks on which the LSTM's loss is lower.

  python -m benchmarks.lopt_paired --workdir=runs/lopt_quadratic_tbptt \
      --out=docs/measurements/lopt_quadratic_tbptt_paired_cpu2.json
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

from metalearn import core

_WORKDIR = flags.DEFINE_string("workdir", None, "a lopt run's workdir (holding curves.npz)")
_OUT = flags.DEFINE_string("out", None, "JSON file to write")
_STEPS = flags.DEFINE_list("steps", ["100", "200"], "optimizee steps k")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  curves = dict(np.load(os.path.join(_WORKDIR.value, "curves.npz")))
  lstm = curves.pop("lstm")
  out = {"workdir": os.path.basename(os.path.normpath(_WORKDIR.value)), "num_tasks": len(lstm)}
  for name, c in curves.items():
    row = {}
    for k in map(int, _STEPS.value):
      diff = lstm[:, k] - c[:, k]
      row[f"lstm_minus_baseline@{k}"] = core.summarize({"d": diff})["d"]
      row[f"lstm_lower_fraction@{k}"] = float(np.mean(lstm[:, k] < c[:, k]))
      row[f"median_ratio@{k}"] = float(np.median(lstm[:, k] / c[:, k]))
    out[name] = row
    cells = "  ".join(
      f"@{k}: {row[f'lstm_minus_baseline@{k}']['mean']:+.4f} ± "
      f"{row[f'lstm_minus_baseline@{k}']['ci95']:.4f} (lower on "
      f"{row[f'lstm_lower_fraction@{k}']:.0%})"
      for k in map(int, _STEPS.value)
    )
    print(f"lstm - {name:>9} {cells}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  app.run(main)
