"""2-D point navigation (Finn et al. 2017, Sec. 5.3) as a gymnax environment.

A point starts at the origin of the plane and must reach a goal drawn
uniformly from `[-0.5, 0.5]^2`. The observation is the point's position, the
action a velocity clipped to `[-0.1, 0.1]^2` per coordinate, the reward after
each move `-||position - goal||`, and an episode ends after 100 steps or once
the point is within 0.01 of the goal in both coordinates (the termination rule
of the authors' rllab environment and of pytorch-maml-rl's `2DNavigation-v0`).

A meta-RL task is an `EnvParams`, whose only array is the goal, so a batch of
tasks is `EnvParams(goal=[T, 2])` (the horizon is static). gymnax's
`Environment.step` adds the time limit (`is_truncated`) and the automatic
reset after an episode ends, and returns its six values
`(obs, state, reward, terminated, truncated, info)`.

References:
  Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of
  Deep Networks. ICML 2017, Sec. 5.3 ("2D Navigation").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

GOAL_RANGE = 0.5  # goals uniform in [-GOAL_RANGE, GOAL_RANGE]^2
MAX_ACTION = 0.1  # actions clipped to [-MAX_ACTION, MAX_ACTION] per coordinate
GOAL_TOLERANCE = 0.01  # episode terminates when |position - goal| < this in both coordinates
HORIZON = 100


@struct.dataclass
class EnvState(environment.EnvState):
  """The point's position `[2]` and the steps taken in the episode."""

  position: jax.Array
  time: int


@struct.dataclass
class EnvParams(environment.EnvParams):
  """One task: the goal `[2]`; the horizon is static (not an array of the task)."""

  goal: jax.Array = struct.field(default_factory=lambda: jnp.zeros(2, jnp.float32))
  max_steps_in_episode: int = struct.field(pytree_node=False, default=HORIZON)


class Navigation2D(environment.Environment[EnvState, EnvParams]):
  """The 2-D navigation task family of MAML (observation = position, action = velocity)."""

  @property
  def default_params(self) -> EnvParams:
    return EnvParams()

  def step_env(
    self, key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams
  ) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict[Any, Any]]:
    """Moves by the clipped action `[2]`; reward is minus the new distance to the goal."""
    del key
    velocity = jnp.clip(jnp.asarray(action, jnp.float32), -MAX_ACTION, MAX_ACTION)
    position = state.position + velocity
    reward = -jnp.linalg.norm(position - params.goal)
    state = EnvState(position=position, time=state.time + 1)
    terminated = self.is_terminated(state, params)
    return position, state, reward, terminated, {}

  def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
    """Starts at the origin (deterministic; `key` is unused)."""
    del key, params
    state = EnvState(position=jnp.zeros(2, jnp.float32), time=0)
    return state.position, state

  def is_terminated(self, state: EnvState, params: EnvParams) -> jax.Array:
    return jnp.all(jnp.abs(state.position - params.goal) < GOAL_TOLERANCE)

  @property
  def name(self) -> str:
    return "Navigation2D"

  @property
  def num_actions(self) -> int:
    return 2

  def action_space(self, params: EnvParams | None = None) -> spaces.Box:
    return spaces.Box(-MAX_ACTION, MAX_ACTION, (2,), jnp.float32)

  def observation_space(self, params: EnvParams | None = None) -> spaces.Box:
    return spaces.Box(-jnp.inf, jnp.inf, (2,), jnp.float32)


def sample_tasks(key: jax.Array, num_tasks: int, horizon: int = HORIZON) -> EnvParams:
  """`num_tasks` goals uniform in `[-0.5, 0.5]^2`: `EnvParams(goal=[num_tasks, 2])`.

  Raises:
    ValueError: if `num_tasks` or `horizon` is not a positive int.
  """
  for name, value in (("num_tasks", num_tasks), ("horizon", horizon)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  goal = jax.random.uniform(key, (num_tasks, 2), jnp.float32, -GOAL_RANGE, GOAL_RANGE)
  return EnvParams(goal=goal, max_steps_in_episode=horizon)


def oracle_action(position: jax.Array, params: EnvParams) -> jax.Array:
  """The optimal action: the step toward the goal projected on the action box.

  Projecting `goal - position` on the box minimises the next distance, and as
  the box is a product of intervals every coordinate also ends up as close as
  any policy could bring it at every later step, so acting greedily is optimal
  for the sum of rewards.
  """
  return jnp.clip(params.goal - position, -MAX_ACTION, MAX_ACTION)
