"""RL² on random tabular MDPs (Duan et al. 2016, Sec. 3.2, Table 2): 10 states, 5 actions, H = 10.

Rewards N(mu, 1) with mu ~ N(1, 1) per (state, action), transitions from a
flat Dirichlet, each episode from state 0; n = 10 episodes per trial by default.
GRU policy trained with PPO's clipped objective and GAE (metalearn/algorithms/rl2.py).
Evaluation: total reward per trial on 1,000 held-out MDPs next to the random
policy and value iteration on the true MDP (the upper bound).

Run:

  python -m experiments.meta_train --config=experiments/configs/rl2_mdp.py \
      --workdir=runs/rl2_mdp_n10 [--config.num_episodes=25]

Smoke variant (a few steps, for CI): `--config=experiments/configs/rl2_mdp.py:smoke`.
"""

from ml_collections import config_dict

from experiments.configs import _common
from experiments.families import _rl2


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the config; `arg` may be `smoke` (a few-step variant)."""
  _, smoke = _common.parse_arg(arg, "rl2", _rl2.METHODS)
  c = _rl2.common_config("tabular_mdp")
  c.num_states, c.num_actions, c.horizon = 10, 5, 10
  c.num_episodes = 10
  c.num_steps = 2000
  c.meta_batch_size = 64
  c.learner = _rl2.learner_block(hidden=256, gamma=0.99, gae_lambda=0.3, entropy_coef=0.01)
  if smoke:
    c.num_steps, c.meta_batch_size, c.num_episodes = 4, 8, 2
    c.eval_every, c.checkpoint_every, c.log_every = 2, 2, 1
    c.num_val_tasks, c.num_eval_tasks, c.eval_batch_size = 16, 32, 16
    c.learner.hidden = 16
  return c
