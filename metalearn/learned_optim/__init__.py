"""Learned optimizers as optax transformations, and their meta-training.

- `lstm`: the coordinatewise LSTM optimizer (`lstm_init`, `lstm_optimizer`,
  `lstm_update` for MAML's inner loop, `as_sgd`); `inner_optimizer` makes an
  inner update from a name (what a config's learner block can hold).
- `quadratic`: the paper's 10-dimensional quadratic optimizees, sampled in
  JAX (`sample_quadratics`), and `evaluate_optimizer`.
- `meta_loss`: `lstm_meta_learner`, the LSTM meta-trained through the
  optimizee's unroll (`optimizee_unroll`), as a `core.MetaLearner`.
- `mnist`: the paper's MNIST MLP optimizee (IDX files from a directory or
  tensorflow-datasets).
- `baselines`: Adam, RMSprop, momentum and Nesterov with tuned rates, and the
  comparison table.
- `step_size`: a learned step size on a long-horizon quadratic, whose
  truncation bias is known in closed form.
- `estimators`: meta-gradients of an unrolled objective, `tbptt`, `es` and
  `pes` (Vicol et al. 2021), one signature.

References:
  Andrychowicz et al. Learning to learn by gradient descent by gradient
  descent. NeurIPS 2016.
"""

from metalearn.learned_optim.estimators import ESTIMATORS, Unrolled, es, estimator, pes, tbptt
from metalearn.learned_optim.lstm import (
  INNER_OPTIMIZERS,
  LSTMState,
  as_sgd,
  inner_optimizer,
  lstm_init,
  lstm_optimizer,
  lstm_step,
  lstm_update,
  preprocess_gradient,
)
from metalearn.learned_optim.meta_loss import UnrollState, lstm_meta_learner, optimizee_unroll
from metalearn.learned_optim.quadratic import (
  evaluate_optimizer,
  initial_params,
  loss_curve,
  quadratic_loss,
  sample_quadratics,
)

__all__ = [
  "ESTIMATORS",
  "INNER_OPTIMIZERS",
  "LSTMState",
  "UnrollState",
  "Unrolled",
  "as_sgd",
  "es",
  "estimator",
  "evaluate_optimizer",
  "initial_params",
  "inner_optimizer",
  "loss_curve",
  "lstm_init",
  "lstm_meta_learner",
  "lstm_optimizer",
  "lstm_step",
  "lstm_update",
  "optimizee_unroll",
  "pes",
  "preprocess_gradient",
  "quadratic_loss",
  "sample_quadratics",
  "tbptt",
]
