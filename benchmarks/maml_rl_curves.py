"""Learning curves of the MAML-TRPO and pretrained navigation runs from their metrics.jsonl.

python -m benchmarks.maml_rl_curves --out docs/figures/maml_rl_navigation_curves_cpu2.png
"""

from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = {
  "MAML-TRPO, after 1 step": ("maml_rl_navigation_metrics_cpu2.jsonl", "return_after"),
  "MAML-TRPO, before adaptation": ("maml_rl_navigation_metrics_cpu2.jsonl", "return_before"),
  "pretrained on all goals (no adaptation)": (
    "maml_rl_navigation_pretrained_metrics_cpu2.jsonl",
    "return_after",
  ),
}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for label, (name, key) in RUNS.items():
    with open(os.path.join(HERE, name)) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if key in r]
    ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=label)
  ax.set_xlabel("meta-iteration (TRPO step)")
  ax.set_ylabel("mean return on the meta-batch's 20 goals")
  ax.set_title("2-D navigation, training (CPU, 2 cores)")
  ax.legend()
  fig.savefig(args.out, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
  main()
