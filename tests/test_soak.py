"""generate() as a serving process uses it: a short soak (scripts/soak_generate.py: no
compilation after warm-up, host memory flat, mixed batch sizes inside warmed buckets, with
and without valid items, unquantized and FP8) and calls from 4 threads at once on one
model, which must equal the same calls made one after another."""

import pathlib
import sys
import threading

import jax
import numpy as np

from onerec_jax import generate as gen
from onerec_jax import quant
from onerec_jax.config import preset
from onerec_jax.model import default_rules, init_params

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
from soak_generate import soak  # noqa: E402

# A config of this file's own, so that no other test has compiled its programs in this
# process (the compiled-search table is per process) and the warm-up must compile them.
CFG = preset("tiny").replace(codebook_sizes=(16, 16, 17))


def _params(seed):
  return jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(seed))


def test_short_soak_compiles_nothing_after_warmup_and_memory_stays_flat():
  summary = soak(CFG, _params(0), calls=300, buckets=(2, 4), beam_width=4, items=64)["summary"]
  assert summary["warmup_compiles"] >= 8  # 2 buckets x 4 variants at least
  assert summary["compiles_after_warmup"] == 0
  assert abs(summary["host_rss_bytes"]["change"]) <= 0.02, summary["host_rss_bytes"]
  assert summary["passed"]


def test_four_threads_on_one_model_equal_serial_calls():
  """Cold caches, so that the threads trace and compile at once: unquantized and FP8 calls
  (the FP8 interception must stay in its own thread's trace), with and without valid
  items, of different batch sizes; three rounds each."""
  params = _params(1)
  rules = default_rules(CFG)
  qparams = quant.quantize_params(params, rules)
  table = gen.build_item_table(*gen.random_items(CFG, 100, seed=3), CFG.codebook_sizes)
  jobs = [dict(params=params, rules=None, valid_items=None, batch=3),
          dict(params=qparams, rules=rules, valid_items=None, batch=5),
          dict(params=params, rules=None, valid_items=table, batch=2),
          dict(params=qparams, rules=rules, valid_items=table, batch=7)]

  def call(job, round_):
    features = gen.random_contexts(CFG, job["batch"], seed=10 * round_ + job["batch"])
    return gen.generate(job["params"], CFG, features, beam_width=6, rules=job["rules"],
                        valid_items=job["valid_items"], batch_buckets=(4, 8))

  threaded = {}
  start = threading.Barrier(len(jobs))

  def worker(i):
    start.wait()
    threaded[i] = [call(jobs[i], r) for r in range(3)]

  threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert sorted(threaded) == list(range(len(jobs)))  # no thread died
  for i, job in enumerate(jobs):
    for r in range(3):
      serial, got = call(job, r), threaded[i][r]
      for a, b in zip(serial, got):
        if a is not None:
          np.testing.assert_array_equal(a, b, err_msg=f"job {i}, round {r}")
