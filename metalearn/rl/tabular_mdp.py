"""Random tabular MDPs in gymnax's interface, the task being the MDP's rewards and transitions.

Duan et al. (2016, Sec. 3.2): 10 states, 5 actions, episodes of 10 steps, each
starting in state 0. Per task, the mean reward of each (state, action) is drawn
i.i.d. from N(1, 1) and a step's reward from N(mean, 1); each transition
distribution P(. | s, a) is drawn from the flat Dirichlet(1, ..., 1). (The
paper's text gives the priors; the start state and the unit reward variance
are those of the authors' released environment.) A trial is n episodes of the
same MDP; the observation is the one-hot current state.

  env = TabularMDP()
  params = env.sample_params(key)    # EnvParams(reward_means [10, 5], transitions [10, 5, 10])
  obs, state = env.reset(key, params)

References: Duan et al. 2016, "RL²: Fast reinforcement learning via slow
reinforcement learning", arXiv:1611.02779.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

PAPER_EPISODES = (10, 25, 50, 75, 100)


@struct.dataclass
class EnvState(environment.EnvState):
  """`state`: the current state `[]` int32; `time`: steps taken in this episode."""

  state: jax.Array = 0


@struct.dataclass
class EnvParams(environment.EnvParams):
  """One task: an MDP.

  Attributes:
    reward_means: `[S, A]`, the mean of the Gaussian (unit variance) reward.
    transitions: `[S, A, S]`, each `transitions[s, a]` a distribution.
    max_steps_in_episode: the horizon H (static), 10 in the paper.
  """

  reward_means: jax.Array = struct.field(default_factory=lambda: jnp.ones([10, 5]))
  transitions: jax.Array = struct.field(default_factory=lambda: jnp.full([10, 5, 10], 0.1))
  max_steps_in_episode: int = struct.field(pytree_node=False, default=10)


class TabularMDP(environment.Environment[EnvState, EnvParams]):
  """A finite MDP with Gaussian rewards, episodes of `horizon` steps from state 0.

  Args:
    num_states: S.
    num_actions: A.
    horizon: H, steps per episode.
    reward_std: the standard deviation of a step's reward around its mean.
  """

  def __init__(
    self, num_states: int = 10, num_actions: int = 5, horizon: int = 10, reward_std: float = 1.0
  ):
    for name, value in (("num_states", num_states), ("num_actions", num_actions)):
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(horizon, int) or horizon < 1:
      raise ValueError(f"horizon must be a positive int, got {horizon!r}")
    if not reward_std >= 0:
      raise ValueError(f"reward_std must be >= 0, got {reward_std!r}")
    super().__init__()
    self.num_states, self._num_actions = num_states, num_actions
    self.horizon, self.reward_std = horizon, float(reward_std)

  @property
  def default_params(self) -> EnvParams:
    s, a = self.num_states, self._num_actions
    return EnvParams(
      reward_means=jnp.ones([s, a]),
      transitions=jnp.full([s, a, s], 1.0 / s),
      max_steps_in_episode=self.horizon,
    )

  def sample_params(self, key: jax.Array) -> EnvParams:
    """A task: means N(1, 1), transitions flat Dirichlet (Duan et al. 2016)."""
    s, a = self.num_states, self._num_actions
    k_r, k_p = jax.random.split(key)
    means = 1.0 + jax.random.normal(k_r, [s, a])
    transitions = jax.random.dirichlet(k_p, jnp.ones([s]), [s, a])
    return EnvParams(reward_means=means, transitions=transitions, max_steps_in_episode=self.horizon)

  def step_env(self, key, state, action, params):
    k_s, k_r = jax.random.split(key)
    p = params.transitions[state.state, action]
    next_state = jax.random.categorical(k_s, jnp.log(p)).astype(jnp.int32)
    mean = params.reward_means[state.state, action]
    reward = mean + self.reward_std * jax.random.normal(k_r, mean.shape)
    state = EnvState(time=state.time + 1, state=next_state)
    return self.get_obs(state), state, reward, jnp.array(False), {}

  def reset_env(self, key, params):
    state = EnvState(time=jnp.array(0, jnp.int32), state=jnp.array(0, jnp.int32))
    return self.get_obs(state), state

  def get_obs(self, state, params=None, key=None) -> jax.Array:
    return jax.nn.one_hot(state.state, self.num_states)

  def is_terminated(self, state, params) -> jax.Array:
    return jnp.array(False)

  @property
  def num_actions(self) -> int:
    return self._num_actions

  def action_space(self, params=None) -> spaces.Discrete:
    return spaces.Discrete(self._num_actions)

  def observation_space(self, params=None) -> spaces.Box:
    return spaces.Box(0.0, 1.0, (self.num_states,), jnp.float32)
