r"""Meta-trains one method on one task family from a config.

  python -m experiments.meta_train --config=experiments/configs/sinusoid.py \
      --workdir=runs/sinusoid_maml [--config.method=metasgd --config.shots=5]

Running the same command again resumes from the last checkpoint in --workdir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import train

_CONFIG = config_flags.DEFINE_config_file("config", lock_config=True, help_string="config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "run folder (checkpoints, metrics, eval.json)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # progress lines are printed; keep orbax quiet
  try:
    train.validate(_CONFIG.value, _WORKDIR.value)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
