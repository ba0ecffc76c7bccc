"""Sinusoid regression tasks (Finn et al. 2017, Sec. 5.1).

A task is `y = A sin(x - phase)` with amplitude A ~ U[0.1, 5.0], phase ~
U[0, pi] and inputs x ~ U[-5, 5]; K support points and Q query points are
drawn independently per task.

References:
  Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of
  Deep Networks. ICML 2017, Sec. 5.1.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from metalearn.episodes import Episode, Split


@dataclasses.dataclass(frozen=True)
class Sinusoid:
  """Sampler of sinusoid regression episodes.

  Attributes:
    shots: K, support points per task.
    queries: Q, query points per task.
    amplitude: range of A.
    phase: range of the phase.
    x_range: range of the inputs.
  """

  shots: int = 10
  queries: int = 10
  amplitude: tuple[float, float] = (0.1, 5.0)
  phase: tuple[float, float] = (0.0, np.pi)
  x_range: tuple[float, float] = (-5.0, 5.0)

  def __post_init__(self):
    for name in ("shots", "queries"):
      value = getattr(self, name)
      if not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")

  def tasks(self, rng: np.random.Generator, num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws task parameters: amplitudes `[T]` and phases `[T]`."""
    return (
      rng.uniform(*self.amplitude, size=num_tasks),
      rng.uniform(*self.phase, size=num_tasks),
    )

  @staticmethod
  def function(amplitude, phase, x):
    """`A sin(x - phase)`, broadcasting."""
    return amplitude * np.sin(x - phase)

  def episodes_for(
    self, rng: np.random.Generator, amplitude: np.ndarray, phase: np.ndarray
  ) -> Episode:
    """Samples support/query points for given tasks: a batch `[T, n, 1]` in float32."""
    t = len(amplitude)

    def split(n):
      x = rng.uniform(*self.x_range, size=(t, n, 1))
      y = self.function(amplitude[:, None, None], phase[:, None, None], x)
      return Split(x.astype(np.float32), y.astype(np.float32), np.ones((t, n), bool))

    return Episode(split(self.shots), split(self.queries))

  def sample(self, rng: np.random.Generator, num_tasks: int) -> Episode:
    """Draws `num_tasks` tasks and their episodes: `[T, K or Q, 1]` arrays."""
    amplitude, phase = self.tasks(rng, num_tasks)
    return self.episodes_for(rng, amplitude, phase)


@dataclasses.dataclass(frozen=True)
class SineOrLine:
  """Ambiguous regression tasks: half sinusoids, half lines, observed with noise.

  A task is `A sin(x - phase)` (A ~ U[0.1, 5], phase ~ U[0, pi]) with
  probability `sine_fraction`, else `slope * x + intercept` (both ~ U[-3, 3]);
  every observation gets Gaussian noise of standard deviation `noise` (0.3 in
  the paper). With 5 support points some tasks are consistent with both
  families: the setting of PLATIPUS's ambiguous regression experiment.

  Attributes:
    shots: K, support points per task.
    queries: Q, query points per task.
    noise: observation noise standard deviation (>= 0).
    sine_fraction: probability that a task is a sinusoid.
    x_range: range of the inputs.

  References:
    Finn, Xu, Levine. Probabilistic Model-Agnostic Meta-Learning. NeurIPS 2018, Sec. 5.1.
  """

  shots: int = 5
  queries: int = 10
  noise: float = 0.3
  sine_fraction: float = 0.5
  x_range: tuple[float, float] = (-5.0, 5.0)

  def __post_init__(self):
    Sinusoid(shots=self.shots, queries=self.queries)  # the same checks of shots and queries
    if not self.noise >= 0:
      raise ValueError(f"noise must be >= 0, got {self.noise!r}")
    if not 0 <= self.sine_fraction <= 1:
      raise ValueError(f"sine_fraction must be in [0, 1], got {self.sine_fraction!r}")

  def tasks(self, rng: np.random.Generator, num_tasks: int) -> tuple[np.ndarray, ...]:
    """Task parameters `[T]` each: `is_sine` (bool), and (A, phase) or (slope, intercept)."""
    is_sine = rng.uniform(size=num_tasks) < self.sine_fraction
    amplitude, phase = Sinusoid().tasks(rng, num_tasks)
    slope, intercept = rng.uniform(-3.0, 3.0, size=(2, num_tasks))
    return is_sine, np.where(is_sine, amplitude, slope), np.where(is_sine, phase, intercept)

  @staticmethod
  def function(is_sine, a, b, x):
    """The noiseless task function, broadcasting: `a sin(x - b)` or `a x + b`."""
    return np.where(is_sine, a * np.sin(x - b), a * x + b)

  def episodes_for(self, rng: np.random.Generator, is_sine, a, b) -> Episode:
    """Samples noisy support/query points for given tasks: a batch `[T, n, 1]` in float32."""
    t = len(a)
    params = [np.asarray(p)[:, None, None] for p in (is_sine, a, b)]

    def split(n):
      x = rng.uniform(*self.x_range, size=(t, n, 1))
      y = self.function(*params, x) + self.noise * rng.normal(size=(t, n, 1))
      return Split(x.astype(np.float32), y.astype(np.float32), np.ones((t, n), bool))

    return Episode(split(self.shots), split(self.queries))

  def sample(self, rng: np.random.Generator, num_tasks: int) -> Episode:
    """Draws `num_tasks` tasks and their episodes: `[T, K or Q, 1]` arrays."""
    return self.episodes_for(rng, *self.tasks(rng, num_tasks))
