"""Meta-reinforcement learning: pure-JAX environments in gymnax's interface, rollouts, estimators.

A task is an environment's `EnvParams` (a goal, arm means, an MDP) drawn from
a key; rollouts of a batch of tasks x trajectories x time steps are one jitted
computation. Import the submodules directly (`metalearn.rl.navigation`, ...).
"""
