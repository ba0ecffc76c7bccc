r"""A fingerprint of the compiled Conv4 MAML meta-step, to compare two versions of the code.

  PYTHONPATH=<checkout> python -m benchmarks.step_program --out=program.json

Compiles second-order MAML's meta-step (Conv4, 5-way 1-shot with 15 queries,
4 tasks, strategy `map`, Adam) for this machine and writes the SHA-256 of its
optimised HLO instructions, with names of source locations, stack frames and
numeric suffixes dropped (and the step's argument names `episodes` and `tasks`
made one), so that two checkouts whose steps compile to the same program give
the same digest: their speed then differs by measurement noise alone.
"""

from __future__ import annotations

import hashlib
import json
import re

import jax
import numpy as np
import optax
from absl import app, flags

from metalearn import algorithms, core
from metalearn.data.sampler import EpisodicSampler
from metalearn.models import Conv4

_OUT = flags.DEFINE_string("out", None, "write the digest as JSON here")


def instructions(text: str) -> list[str]:
  """The HLO module's instruction lines, without metadata, numeric suffixes or argument names."""
  body = text[text.index("HloModule") :]
  lines = [line for line in body.splitlines() if re.match(r"^(ENTRY|%|ROOT|  )", line)]
  out = []
  for line in lines:
    line = re.sub(r", metadata=\{[^}]*\}", "", line)
    line = re.sub(r"\.\d+", "", line).replace("episodes", "tasks")
    out.append(line)
  return out


def main(argv):
  del argv
  learner = algorithms.maml(Conv4(ways=5), inner_lr=0.4, inner_steps=1, objective="cross_entropy")
  images = np.random.default_rng(0).integers(0, 255, size=(20, 20, 28, 28), dtype=np.uint8)
  batch = EpisodicSampler(images, 5, 1, 15).sample(np.random.default_rng(1), 4)
  optimizer = optax.adam(1e-3)
  example = jax.tree_util.tree_map(lambda a: a[0], batch)
  state = core.init_state(learner, optimizer, jax.random.PRNGKey(0), example)
  step = core.make_meta_step(learner, optimizer, strategy="map")
  lines = instructions(jax.jit(step).lower(state, batch).compile().as_text())
  digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
  report = {"sha256": digest, "instructions": len(lines), "jax": jax.__version__}
  print(json.dumps(report))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  app.run(main)
