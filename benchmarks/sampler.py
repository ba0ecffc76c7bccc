r"""Episodes per second of the Omniglot episodic sampler (host side, numpy).

  python -m benchmarks.sampler [--data_dir=DIR] [--out=sampler.json]

Times `EpisodicSampler.sample` on the Vinyals training split (4,400 classes of
20 drawings, 28x28) for 5-way 1-shot with 15 queries and 20-way 5-shot with 5
queries (Finn et al. 2017), meta-batches of 32 tasks: the median over
`--repeats` calls, as tasks/s and meta-batches/s; and, with
`prefetched_episodes` (background thread) feeding a loop whose "device step"
takes `--step_ms` (a sleep, which like a running JAX step releases the GIL),
the median and 90th percentile time the loop waits for its next batch: near
zero means sampling is hidden behind the step.

The real data is used when `--data_dir` is given or `$METALEARN_OMNIGLOT_DIR`
is set (the first call prepares it; see metalearn/data/omniglot.py); otherwise
a random uint8 array of the same shape, which times the same.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags

from benchmarks import common
from metalearn.data import omniglot
from metalearn.data.sampler import EpisodicSampler, prefetched_episodes

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data folder holding (or to hold) Omniglot")
_ZIP_DIR = flags.DEFINE_string(
  "zip_dir", None, f"folder of the authors' zips (default ${omniglot.ENV_VAR})"
)
_BATCH = flags.DEFINE_integer("meta_batch_size", 32, "tasks per meta-batch")
_REPEATS = flags.DEFINE_integer("repeats", 200, "timed meta-batches per configuration")
_STEP_MS = flags.DEFINE_float("step_ms", 10.0, "simulated device step for the prefetch wait")
_OUT = flags.DEFINE_string("out", None, "write the results as JSON here")

CONFIGS = [(5, 1, 15), (20, 5, 5)]  # (ways, shots, queries)


def load_images() -> tuple[np.ndarray, str]:
  if _DATA_DIR.value or _ZIP_DIR.value or os.environ.get(omniglot.ENV_VAR):
    start = time.perf_counter()
    splits = omniglot.load_omniglot(_DATA_DIR.value, zip_dir=_ZIP_DIR.value)
    print(f"loaded Omniglot in {time.perf_counter() - start:.2f}s")
    return splits["train"], "omniglot vinyals train"
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (4400, 20, 28, 28), dtype=np.uint8), "random uint8 (no data)"


def bench(images: np.ndarray, ways: int, shots: int, queries: int) -> dict:
  sampler = EpisodicSampler(images, ways, shots, queries)
  batch_size = _BATCH.value
  index = iter(range(10**9))
  timing = common.time_calls(
    lambda: sampler.sample(np.random.default_rng([0, 1, next(index)]), batch_size),
    repeats=_REPEATS.value,
    warmup=5,
  )
  waits = []
  with prefetched_episodes(sampler, batch_size, seed=0) as batches:
    next(batches)
    for _ in range(min(_REPEATS.value, 100)):
      time.sleep(_STEP_MS.value / 1e3)  # the device step
      start = time.perf_counter()
      next(batches)
      waits.append(time.perf_counter() - start)
  return {
    "config": f"{ways}-way {shots}-shot {queries}q",
    "ways": ways,
    "shots": shots,
    "queries": queries,
    "meta_batch_size": batch_size,
    "batch_median_s": timing["median_s"],
    "batches_per_s": 1 / timing["median_s"],
    "tasks_per_s": batch_size / timing["median_s"],
    "prefetch_step_ms": _STEP_MS.value,
    "prefetch_wait_median_s": float(np.median(waits)),
    "prefetch_wait_p90_s": float(np.percentile(waits, 90)),
    "timing": timing,
  }


def main(argv):
  del argv
  images, source = load_images()
  rows = [bench(images, *config) for config in CONFIGS]
  print(f"\nsampler on {source} {images.shape}, meta-batch {_BATCH.value}:")
  wait = f"wait@{_STEP_MS.value:g}ms step (p50/p90 ms)"
  print(f"{'config':<20}{'ms/batch':>9}{'batches/s':>11}{'tasks/s':>9}  {wait}")
  for r in rows:
    print(
      f"{r['config']:<20}{1e3 * r['batch_median_s']:>9.2f}{r['batches_per_s']:>11.0f}"
      f"{r['tasks_per_s']:>9.0f}  {1e3 * r['prefetch_wait_median_s']:.2f} / "
      f"{1e3 * r['prefetch_wait_p90_s']:.2f}"
    )
  common.write_json(
    _OUT.value,
    {"machine": common.machine(), "data": source, "shape": list(images.shape), "results": rows},
  )


if __name__ == "__main__":
  app.run(main)
