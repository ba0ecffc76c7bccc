"""`families.gp.reference_rows`: the reference rows asked for, and only those."""

import jax

from benchmarks import common
from experiments.families import gp as family


def test_reference_rows_without_the_trivial_row():
  config = common.gp_reference_config("eq", num_tasks=8, batch_size=4)
  assert (config.num_eval_tasks, config.eval_batch_size) == (8, 4)
  key = jax.random.PRNGKey(1)
  rows = family.reference_rows(config, key, ["diagonal_gp"])  # raised KeyError("trivial")
  assert set(rows) == {"diagonal_gp"}
  both = family.reference_rows(config, key, ["trivial", "diagonal_gp"])
  assert set(both["trivial"]["moments"]) == {"mean", "std"}
  # The same tasks and key: the diagonal GP's row does not depend on which others are asked for.
  assert rows["diagonal_gp"]["kl"] == both["diagonal_gp"]["kl"]
