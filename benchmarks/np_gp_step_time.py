"""Step time of the neural processes on the EQ GP task: batch 16, the benchmark architecture.

python -m benchmarks.np_gp_step_time cnp acnp np anp
"""

import sys
import time

import jax
import optax

from metalearn import core
from metalearn.algorithms import neural_process as npm
from metalearn.data import gp

k = gp.get_kernel("eq")
sample = jax.jit(lambda key: gp.sample_tasks(key, 16, kernel=k))
for name in sys.argv[1:]:
  L = npm.REGISTRY[name]()
  opt = optax.adam(3e-4)
  st = core.init_state(L, opt, jax.random.PRNGKey(0), core.task(sample(jax.random.PRNGKey(0)), 0))
  step = jax.jit(core.make_meta_step(L, opt, strategy="vmap"))
  b = sample(jax.random.PRNGKey(1))
  st, m = step(st, b)
  jax.block_until_ready(m)
  t = time.time()
  n = 50
  for i in range(n):
    st, m = step(st, sample(jax.random.PRNGKey(i)))
  jax.block_until_ready(m)
  print(name, "ms/step", 1000 * (time.time() - t) / n, flush=True)
