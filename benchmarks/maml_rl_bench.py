"""Times one MAML-TRPO meta-iteration on 2-D navigation and the environment's steps per second.

  python -m benchmarks.maml_rl_bench --out docs/measurements/maml_rl_step_time_cpu2.json

One meta-iteration = `learner.meta_grad` of `metalearn.algorithms.maml_rl`,
timed for each way of forming the Fisher-vector products (`--fisher`; the
first is the headline), on a meta-batch of 20 goals: 20 trajectories x 100
steps per goal before and after the inner step, the inner policy-gradient step,
and the TRPO step (10 CG steps on Fisher-vector products through the
adaptation, the line search). Times are
medians of repeated calls of the compiled program (compile excluded).
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import numpy as np

from metalearn.algorithms import maml_rl
from metalearn.rl import navigation as nav
from metalearn.rl import rollout as ro


def median_time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args[:-1], jax.random.PRNGKey(100 + i)))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), [round(t, 4) for t in times]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--fisher", default="gauss_newton,kl_hessian")
  args = parser.parse_args()
  env, policy = nav.Navigation2D(), ro.gaussian_mlp(2)
  goals = nav.sample_tasks(jax.random.PRNGKey(0), 20)
  theta = maml_rl.maml_rl(env, policy).init(jax.random.PRNGKey(1), goals)
  key = jax.random.PRNGKey(2)

  per_fisher = {}
  for fisher in args.fisher.split(","):
    meta_iteration = jax.jit(maml_rl.maml_rl(env, policy, fisher=fisher).meta_grad)
    per_fisher[fisher] = median_time(meta_iteration, theta, goals, key, repeats=args.repeats)
  t_iter, all_iter = per_fisher[args.fisher.split(",")[0]]

  def rollouts(theta, goals, key):  # the sampling of one meta-iteration: before and after
    def one(goal, key):
      k1, k2 = jax.random.split(key)
      traj = ro.rollout(env, goal, functools.partial(policy.sample, theta), k1, 20)
      batch = maml_rl.policy_batch(policy, theta, traj, gamma=0.99, baseline="linear")
      phi = maml_rl.adapt_step(policy.log_prob, theta, batch, lr=0.1, estimator="lvc")
      after = ro.rollout(env, goal, functools.partial(policy.sample, phi), k2, 20)
      return ro.episode_returns(traj).mean() + ro.episode_returns(after).mean()

    return jax.vmap(one)(goals, jax.random.split(key, 20))

  t_roll, all_roll = median_time(jax.jit(rollouts), theta, goals, key, repeats=args.repeats)

  def env_only(goals, key):  # 20 goals x 20 trajectories x 100 steps of uniform random actions
    box = env.action_space(None)
    one = lambda g, k: ro.rollout(env, g, lambda o, kk: box.sample(kk), k, 20).rewards.sum()
    return jax.vmap(one)(goals, jax.random.split(key, 20))

  t_env, all_env = median_time(jax.jit(env_only), goals, key, repeats=args.repeats)
  steps = 20 * 20 * 100
  record = {
    "what": "MAML-TRPO meta-iteration on 2-D navigation, 20 goals x 20 trajectories x 100 steps "
    "before and after one inner step, plus the TRPO step; 64x64 tanh Gaussian policy",
    "backend": jax.default_backend(),
    "devices": len(jax.devices()),
    "fisher": args.fisher.split(",")[0],
    "meta_iteration_s": t_iter,
    "meta_iteration_s_all": all_iter,
    "meta_iteration_s_by_fisher": {k: v[0] for k, v in per_fisher.items()},
    "meta_iteration_s_all_by_fisher": {k: v[1] for k, v in per_fisher.items()},
    "rollouts_and_inner_step_s": t_roll,
    "rollouts_and_inner_step_s_all": all_roll,
    "rollout_fraction_of_meta_iteration": t_roll / t_iter,
    "rollout_fraction_by_fisher": {k: t_roll / v[0] for k, v in per_fisher.items()},
    "env_steps_per_meta_iteration": 2 * steps,
    "env_steps_per_s_with_policy": 2 * steps / t_roll,
    "env_only_random_actions_s": t_env,
    "env_only_random_actions_s_all": all_env,
    "env_steps_per_s_env_only": steps / t_env,
    "jax": jax.__version__,
  }
  with open(args.out, "w") as f:
    json.dump(record, f, indent=2)
  print(json.dumps(record, indent=2))


if __name__ == "__main__":
  main()
