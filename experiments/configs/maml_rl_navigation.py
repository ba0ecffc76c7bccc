"""MAML-RL on 2-D navigation (Finn et al. 2017, Sec. 5.3; pytorch-maml-rl's settings).

Gaussian MLP policy 64x64 tanh; inner loop one policy-gradient step, lr 0.1,
on 20 trajectories of 100 steps per goal (linear feature baseline, gamma
0.99, normalised advantages); outer loop TRPO (max KL 0.01, 10 CG steps,
damping 1e-5, 15 backtracking steps of 0.8) on 20 goals per meta-batch, 500
meta-iterations; ProMP's LVC meta-gradient estimator. Evaluation: 40 held-out
goals, return before and after 1, 2, 3 steps, next to the oracle, standing
still and random references.

  python -m experiments.meta_train --config=experiments/configs/maml_rl_navigation.py \
      --workdir=runs/maml_rl_navigation [--config.pretrain_steps=500]

E-MAML's exploration term: `--config.learner.exploration=1.0` (with
`--config.learner.estimator=fixed` it is the exact gradient of the expected
return after the sampled step). Running the command again resumes from the
last checkpoint; `--config.num_steps=N` with N at or below the checkpoint's
step only evaluates.

Expected (measured, docs/meta_rl.md: 157 of the 500 iterations in 12 minutes
on 2 CPU cores): mean return -15.0 ± 1.9 after one step on the 40 held-out
goals, -38.0 before (standing still -37.1, oracle -0.5).

Smoke variant (a few steps, for CI): `--config=experiments/configs/maml_rl_navigation.py:smoke`.
"""

from ml_collections import config_dict

from experiments.configs import _common


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the config; `arg` may be `smoke` (a few-step variant)."""
  _, smoke = _common.parse_arg(arg, "maml_trpo", methods=("maml_trpo",))
  c = config_dict.ConfigDict()
  c.task = "navigation"
  c.method = "maml_trpo"
  c.seed = 0
  c.num_steps = 500  # meta-iterations (TRPO steps)
  c.meta_batch_size = 20  # goals per TRPO step
  c.horizon = 100
  c.hidden = (64, 64)
  c.learner = config_dict.ConfigDict(
    dict(
      inner_lr=0.1,
      inner_steps=1,
      num_trajectories=20,
      gamma=0.99,
      baseline="linear",
      normalized=True,
      estimator="lvc",
      exploration=0.0,
      max_kl=0.01,
      cg_steps=10,
      cg_damping=1e-5,
      ls_steps=15,
      ls_backtrack=0.8,
    )
  )
  c.num_eval_tasks = 40
  c.eval_steps = 3  # policy-gradient steps at evaluation: return@0..3
  c.eval_every = 0  # validation on the held-out goals every this many steps (0: at the end)
  c.checkpoint_every = 10
  c.log_every = 10
  c.pretrain_steps = 0  # > 0: also train the pretrained-on-all-tasks reference this long
  c.figure_goals = 4
  c.on_nonfinite = "raise"
  c.host_cores = 0
  if smoke:
    c.num_steps = 2
    c.meta_batch_size = 2
    c.learner.num_trajectories = 2
    c.num_eval_tasks = 3
    c.checkpoint_every = 1
    c.log_every = 1
    c.figure_goals = 2
  return c
