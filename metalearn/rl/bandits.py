"""k-armed Bernoulli bandits in gymnax's interface, the task being the arm means.

Duan et al. (2016, Sec. 3.1): arm means drawn i.i.d. from U[0, 1], k in
{5, 10, 50} arms, n in {10, 100, 500} pulls per trial. A bandit is a one-state
MDP; here each pull is an episode of one step (`done` after every pull, the
environment resetting itself as gymnax's `step` does), so a trial of n pulls is
n episodes and a recurrent agent carries what it learned across them.

  env = BernoulliBandit(num_arms=5)
  params = env.sample_params(key)                # EnvParams(means [5])
  obs, state = env.reset(key, params)            # obs [1], always 0
  obs, state, reward, terminated, truncated, info = env.step(key, state, 2, params)

References: Duan et al. 2016, "RL²: Fast reinforcement learning via slow
reinforcement learning", arXiv:1611.02779.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

PAPER_ARMS = (5, 10, 50)
PAPER_PULLS = (10, 100, 500)


@struct.dataclass
class EnvState(environment.EnvState):
  """`time`: steps taken in the current episode (0 or 1)."""


@struct.dataclass
class EnvParams(environment.EnvParams):
  """One task: the probability of reward 1 of each arm.

  Attributes:
    means: `[k]` in [0, 1].
    max_steps_in_episode: 1 (static): each pull is an episode.
  """

  means: jax.Array = struct.field(default_factory=lambda: jnp.full([5], 0.5))
  max_steps_in_episode: int = struct.field(pytree_node=False, default=1)


class BernoulliBandit(environment.Environment[EnvState, EnvParams]):
  """Pulling arm a pays 1 with probability `params.means[a]`, else 0.

  Args:
    num_arms: k.
  """

  def __init__(self, num_arms: int = 5):
    if not isinstance(num_arms, int) or num_arms < 2:
      raise ValueError(f"num_arms must be an int >= 2, got {num_arms!r}")
    super().__init__()
    self.num_arms = num_arms

  @property
  def default_params(self) -> EnvParams:
    return EnvParams(means=jnp.full([self.num_arms], 0.5))

  def sample_params(self, key: jax.Array) -> EnvParams:
    """A task: arm means i.i.d. U[0, 1] (Duan et al. 2016)."""
    return EnvParams(means=jax.random.uniform(key, [self.num_arms]))

  def step_env(self, key, state, action, params):
    reward = jax.random.bernoulli(key, params.means[action]).astype(jnp.float32)
    state = EnvState(time=state.time + 1)
    return self.get_obs(state), state, reward, jnp.array(False), {}

  def reset_env(self, key, params):
    state = EnvState(time=jnp.array(0, jnp.int32))
    return self.get_obs(state), state

  def get_obs(self, state, params=None, key=None) -> jax.Array:
    return jnp.zeros([1], jnp.float32)

  def is_terminated(self, state, params) -> jax.Array:
    return jnp.array(False)

  @property
  def num_actions(self) -> int:
    return self.num_arms

  def action_space(self, params=None) -> spaces.Discrete:
    return spaces.Discrete(self.num_arms)

  def observation_space(self, params=None) -> spaces.Box:
    return spaces.Box(0.0, 0.0, (1,), jnp.float32)
