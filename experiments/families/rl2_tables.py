r"""The baselines of Duan et al. (2016), Tables 1 and 2, measured on the papers' grids.

  python -m experiments.families.rl2_tables --out=docs/measurements/rl2_baselines_tables_cpu2.json

Bandits: total reward per trial (n pulls) of random, the finite-horizon
Gittins index, Thompson sampling, optimistic Thompson sampling, UCB1 (c = 2),
epsilon-greedy (eps = 0.1) and greedy over (n, k) in {10, 100, 500} x
{5, 10, 50}; tabular MDPs: total reward per trial (n episodes of 10 steps) of
the random policy (simulated) and value iteration on the true MDP (exact
expectation, an upper bound) for n in {10, 25, 50, 75, 100}. 1,000 tasks per
cell (`--num_tasks`), mean ± 95% CI. Prints both tables in the paper's layout.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from metalearn import core, training
from metalearn.rl import bandits, tabular_mdp
from metalearn.rl import baselines as bl

# Duan et al. 2016, arXiv:1611.02779, Table 1 (bandits) and Table 2 (MDPs). Transcribed without
# the paper at hand (its text could not be retrieved here): check against the PDF before citing.
PAPER_BANDIT_COLUMNS = ("Random", "Gittins", "TS", "OTS", "UCB1", "eps-Greedy", "Greedy", "RL2")
PAPER_BANDITS = {
  (10, 5): (5.0, 6.6, 5.7, 6.5, 6.7, 6.6, 6.6, 6.7),
  (10, 10): (5.0, 6.6, 5.5, 6.2, 6.7, 6.6, 6.6, 6.7),
  (10, 50): (5.1, 6.5, 5.2, 5.5, 6.6, 6.5, 6.5, 6.8),
  (100, 5): (49.9, 78.3, 74.7, 77.9, 78.0, 75.4, 74.8, 78.7),
  (100, 10): (49.9, 82.8, 76.7, 81.4, 82.4, 77.4, 77.1, 83.5),
  (100, 50): (49.8, 85.2, 64.5, 67.7, 84.3, 78.3, 78.0, 84.9),
  (500, 5): (249.8, 405.8, 402.0, 406.7, 405.8, 388.2, 380.6, 401.6),
  (500, 10): (249.0, 437.8, 429.5, 438.9, 437.1, 408.0, 395.0, 432.5),
  (500, 50): (249.6, 463.7, 427.2, 437.6, 457.6, 413.6, 402.8, 438.9),
}
PAPER_MDP_COLUMNS = ("Random", "PSRL", "OPSRL", "UCRL2", "BEB", "eps-Greedy", "Greedy", "RL2")
PAPER_MDPS = {
  10: (100.1, 138.1, 144.1, 146.6, 150.2, 132.8, 134.8, 156.2),
  25: (250.2, 408.8, 425.2, 424.1, 427.8, 377.3, 368.8, 445.7),
  50: (499.7, 904.4, 930.7, 918.9, 917.8, 823.3, 769.3, 936.1),
  75: (749.9, 1417.1, 1449.5, 1427.6, 1422.6, 1293.9, 1172.9, 1428.8),
  100: (999.4, 1939.5, 1973.9, 1942.1, 1935.1, 1778.2, 1578.5, 1913.7),
}


def _tasks(env, num_tasks: int, seed: int):
  key = training.episode_key(seed, training.TEST_STREAM)
  return jax.vmap(env.sample_params)(jax.random.split(key, num_tasks))


def bandit_table(num_tasks: int, seed: int) -> dict:
  out, tables = {}, {}  # tables: the Gittins indices per n
  for n, k in PAPER_BANDITS:
    env = bandits.BernoulliBandit(k)
    tasks = _tasks(env, num_tasks, seed)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), num_tasks)
    if n not in tables:
      tables[n] = jnp.asarray(bl.gittins_indices(n))
    policies = {name: (lambda _, pol=pol: pol) for name, pol in bl.bandit_baselines(0.1).items()}
    policies["gittins"] = bl.gittins_policy  # the table is an argument of the jit, not a constant
    cell = {}
    for name, make in policies.items():

      def total(table, p, key, make=make, n=n, env=env):
        return bl.bandit_trial(make(table), env, p, key, n).rewards.sum()

      run = jax.jit(jax.vmap(total, in_axes=(None, 0, 0)))
      values = np.asarray(run(tables[n], tasks, keys))
      cell[name] = core.summarize({"total_reward": values})["total_reward"]
    out[f"n={n},k={k}"] = cell
    print(f"bandit n={n} k={k}: " + ", ".join(f"{m} {s['mean']:.1f}" for m, s in cell.items()))
  return out


def mdp_table(num_tasks: int, seed: int) -> dict:
  env = tabular_mdp.TabularMDP()
  tasks = _tasks(env, num_tasks, seed)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), num_tasks)
  optimum = np.asarray(jax.jit(jax.vmap(lambda p: bl.value_iteration(p).v[0, 0]))(tasks))
  out = {}
  for n in PAPER_MDPS:

    def random_total(p, key, n=n):
      return bl.mdp_trial(bl.uniform_policy(p), env, p, key, n).sum()

    rand = np.asarray(jax.jit(jax.vmap(random_total))(tasks, keys))
    out[f"n={n}"] = {
      name: core.summarize({"total_reward": v})["total_reward"]
      for name, v in (("random", rand), ("value_iteration", n * optimum))
    }
    print(f"mdp n={n}: random {rand.mean():.1f}, value iteration {n * optimum.mean():.1f}")
  return out


def markdown(result: dict) -> str:
  def fmt(s):
    return f"{s['mean']:.1f} ± {s['ci95']:.1f}"

  lines = [
    "| n, k | paper: " + " / ".join(PAPER_BANDIT_COLUMNS) + " | ours: Random | Gittins | TS | "
    "OTS | UCB1 | eps-greedy 0.1 | Greedy |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  names = (
    "random",
    "gittins",
    "thompson",
    "optimistic_thompson",
    "ucb1",
    "epsilon_greedy_0.1",
    "greedy",
  )
  for (n, k), paper in PAPER_BANDITS.items():
    c = result["bandits"][f"n={n},k={k}"]
    ours = [c[m] for m in names]
    lines.append(
      f"| {n}, {k} | {' / '.join(map(str, paper))} | " + " | ".join(map(fmt, ours)) + " |"
    )
  lines += [
    "",
    "| n | paper: " + " / ".join(PAPER_MDP_COLUMNS) + " | ours: Random | value iteration |",
    "|---|---|---|---|",
  ]
  for n, paper in PAPER_MDPS.items():
    c = result["mdps"][f"n={n}"]
    lines.append(
      f"| {n} | {' / '.join(map(str, paper))} | {fmt(c['random'])} | {fmt(c['value_iteration'])} |"
    )
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--num_tasks", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  started = time.time()
  result = {
    "command": "python -m experiments.families.rl2_tables",
    "num_tasks": args.num_tasks,
    "seed": args.seed,
    "bandits": bandit_table(args.num_tasks, args.seed),
    "mdps": mdp_table(args.num_tasks, args.seed),
  }
  result["wall_s"] = round(time.time() - started, 1)
  result["markdown"] = markdown(result)
  training.write_json_atomic(args.out, result)
  print(result["markdown"])


if __name__ == "__main__":
  main()
