"""Reference rows of the GP benchmark on held-out tasks: the trivial baseline and the diagonal GP.

  python -m benchmarks.np_gp_reference --kernel=eq \
      --out=docs/measurements/np_gp_reference_eq_cpu2.json [--rows=trivial]

Uses the held-out tasks a run of `experiments/configs/np_gp.py` evaluates on (seed 0, the test
stream, 4,096 tasks), so the numbers are the `reference` rows of that run's eval.json.
"""

import argparse
import json
import time

import jax

from benchmarks import common
from experiments.families import gp as family

parser = argparse.ArgumentParser()
parser.add_argument("--kernel", default="eq")
parser.add_argument("--num_tasks", type=int, default=4096)
parser.add_argument("--out", required=True)
parser.add_argument("--rows", default="trivial,diagonal_gp")
args = parser.parse_args()
config = common.gp_reference_config(args.kernel, args.num_tasks)
t = time.time()
rows = family.reference_rows(config, jax.random.PRNGKey(config.seed + 1), args.rows.split(","))
record = {"kernel": args.kernel, "num_tasks": args.num_tasks, "seconds": time.time() - t, **rows}
with open(args.out, "w") as f:
  json.dump(record, f, indent=1)
print(json.dumps({k: {m: v[m]["mean"] for m in ("kl", "coverage@90")} for k, v in rows.items()}))
