r"""Monte Carlo means of the MAML-RL meta-gradient estimators on the closed-form problem.

  python -m benchmarks.maml_rl_estimators \
      --out docs/measurements/maml_rl_estimators_cpu2.json

The problem and the estimators are those of tests/rl/maml_rl_test.py (one
step, a ~ N(mu, 1), r = -(a - 1)^2, mu = 0, alpha = 0.1, 5 inner and 5
outer samples), 400,000 independent replicas each.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  spec = importlib.util.spec_from_file_location(
    "maml_rl_test", os.path.join(ROOT, "tests", "rl", "maml_rl_test.py")
  )
  t = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(t)
  d = t.MU - t.GOAL
  targets = {
    "exact_gradient_of_expected_return_after_sampled_step": t.analytic_grad(),
    "maml_formulation_I_gradient": -2 * d * (1 - 2 * t.ALPHA) ** 2,
    "lvc_closed_form_expectation": -2 * d * (1 - 2 * t.ALPHA) ** 2
    - 2 * t.ALPHA**2 / t.N * (8 * d**3 + 44 * d),
  }
  estimates = {}
  for name, estimator, exploration in [
    ("fixed_plus_emaml_term (exact)", "fixed", 1.0),
    ("fixed (ignores the sampling dependence)", "fixed", 0.0),
    ("lvc (ProMP)", "lvc", 0.0),
    ("lvc_plus_emaml_term", "lvc", 1.0),
  ]:
    mean, se = t.monte_carlo(estimator, exploration)
    estimates[name] = {"mean": float(mean), "standard_error": float(se)}
  record = {
    "problem": __doc__.split("\n\n")[2],
    "replicas": t.REPLICAS,
    "targets": targets,
    "estimates": estimates,
  }
  with open(args.out, "w") as f:
    json.dump(record, f, indent=2)
  print(json.dumps(record, indent=2))


if __name__ == "__main__":
  main()
