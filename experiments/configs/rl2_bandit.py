"""RL² on k-armed Bernoulli bandits (Duan et al. 2016, Sec. 3.1, Table 1), k = 5, n = 10 by default.

GRU policy (inputs: observation, previous action, reward, done flag), its
hidden state kept across the n pulls of a trial; PPO's clipped objective with
GAE, one update per batch of fresh trials (see metalearn/algorithms/rl2.py).
Arm means U[0, 1]. Evaluation: total reward per trial on 1,000 held-out
bandits next to random, Thompson sampling, UCB1, epsilon-greedy and greedy.

Run:

  python -m experiments.meta_train --config=experiments/configs/rl2_bandit.py \
      --workdir=runs/rl2_bandit_n10_k5 [--config.num_pulls=100 --config.num_arms=10]

Measured (docs/rl2.md): see docs/measurements/rl2_bandit_*; the bar is RL²
within 5% of Thompson sampling at k = 5, n = 10 and n = 100.

Smoke variant (a few steps, for CI): `--config=experiments/configs/rl2_bandit.py:smoke`.
"""

from ml_collections import config_dict

from experiments.configs import _common
from experiments.families import _rl2


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the config; `arg` may be `smoke` (a few-step variant)."""
  _, smoke = _common.parse_arg(arg, "rl2", _rl2.METHODS)
  c = _rl2.common_config("bandit")
  c.num_arms = 5
  c.num_pulls = 10
  c.epsilon = 0.1  # the epsilon-greedy baseline's
  c.num_steps = 3000
  c.meta_batch_size = 128
  c.outer_lr = 1e-3
  c.learner = _rl2.learner_block(hidden=128, gamma=0.99, gae_lambda=0.3, entropy_coef=0.01)
  if smoke:
    c.num_steps, c.meta_batch_size = 4, 8
    c.eval_every, c.checkpoint_every, c.log_every = 2, 2, 1
    c.num_val_tasks, c.num_eval_tasks, c.eval_batch_size = 16, 32, 16
    c.learner.hidden = 16
  return c
