"""Kernel preloading: a program's kernel custom calls read out of its StableHLO, replayed
alone on zeros, stored beside the exported program and run on a thread of a restarted
process. On the CPU, LAPACK's custom calls stand in for the GPU kernels (same mechanism:
a stablehlo.custom_call with attributes); the GPU test runs the real ones."""

import json
import pathlib
import re
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from onerec_jax import generate as gen
from onerec_jax.config import preset
from onerec_jax.generate import _kernel_calls, compile_cache

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHOLESKY = "lapack_spotrf_ffi"  # float32 Cholesky on the CPU


def _choleskys(a, b):
  """Float32 Cholesky: the same 4x4 call at three sites (lax's symmetrizing one and its
  plain one lower to separate ops) and an 8x8 one."""
  pd = lambda x: x @ x.T + 3 * jnp.eye(x.shape[0], dtype=x.dtype)
  return (jnp.linalg.cholesky(pd(a)), jax.lax.linalg.cholesky(pd(a + 1)),
          jax.lax.linalg.cholesky(pd(a + 2), symmetrize_input=False),
          jnp.linalg.cholesky(pd(b)))


def _lowered():
  with jax.enable_x64():  # and a float64 one: another target
    return jax.jit(lambda a, b: (*_choleskys(a, b),
                                 jnp.linalg.cholesky(a.astype(jnp.float64) + 3))
                   ).lower(jax.ShapeDtypeStruct((4, 4), jnp.float32),
                           jax.ShapeDtypeStruct((8, 8), jnp.float32))


def test_kernel_calls_reads_each_distinct_call_once():
  lowered = _lowered()
  calls = _kernel_calls.kernel_calls(lowered.compiler_ir("stablehlo"), [CHOLESKY])
  # An independent reading of the program's text: four call sites, two distinct calls.
  sites = re.findall(rf"@{CHOLESKY}\(%\w+\).*: \((tensor<[^>]*>)\)", lowered.as_text())
  assert sorted(sites) == ["tensor<4x4xf32>"] * 3 + ["tensor<8x8xf32>"]
  assert [c["operands"] for c in calls] == [
      [{"type": "tensor<4x4xf32>", "shape": [4, 4], "dtype": "float32"}],
      [{"type": "tensor<8x8xf32>", "shape": [8, 8], "dtype": "float32"}]]
  for c in calls:
    n = c["operands"][0]["shape"][0]
    assert c["target"] == CHOLESKY
    assert c["results"] == [{"type": f"tensor<{n}x{n}xf32>", "shape": [n, n],
                             "dtype": "float32"},
                            {"type": "tensor<i32>", "shape": [], "dtype": "int32"}]
    attrs = dict(c["attributes"])
    assert attrs["call_target_name"] == f'"{CHOLESKY}"'
    assert attrs["mhlo.backend_config"] == "{uplo = 76 : ui8}"  # 76: "L", lower
  assert _kernel_calls.kernel_calls(lowered.compiler_ir("stablehlo"), ["other"]) == []


def test_replay_makes_the_same_calls_and_runs_them():
  calls = _kernel_calls.kernel_calls(_lowered().compiler_ir("stablehlo"), [CHOLESKY])
  replay = _kernel_calls.replay(calls)
  assert _kernel_calls.kernel_calls(replay.lower().compiler_ir("stablehlo"),
                                    [CHOLESKY]) == calls  # attributes as they were
  out = [np.asarray(x) for x in replay()]
  # Per call: its factor's first element and LAPACK's info. Zeros are not positive
  # definite, so potrf stops at the first minor: info 1, written by the call alone.
  assert len(out) == 4
  assert [x.tolist() for x in out[1::2]] == [[1], [1]]
  assert [x.tolist() for x in out[0::2]] == [[0.0], [0.0]]


@pytest.fixture
def cache(compile_cache_dir, monkeypatch):
  """A fresh persistent-cache folder for this test, Cholesky standing in for the GPU
  kernels."""
  monkeypatch.setattr(compile_cache, "PRELOADED_CALLS", (CHOLESKY,))
  return compile_cache_dir


def _program(tag):
  fn = _choleskys
  args = (jnp.ones((4, 4), jnp.float32), jnp.ones((8, 8), jnp.float32))
  statics = {"program": f"tests.test_preload.{tag}"}
  return fn, args, statics


def test_preload_runs_a_stored_programs_kernels(cache):
  fn, args, statics = _program("stored")
  assert compile_cache.preload([(args, statics, None)]) is None  # nothing stored yet
  run, how = compile_cache.program(fn, args, statics)
  assert how == "traced"
  (stored,) = (cache / "onerec-exported").glob("*.kernels.json")
  assert len(json.loads(stored.read_text())["calls"]) == 2
  # From the arguments' shapes alone, as a restarted process asks before its weights load.
  shapes = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in args)
  done = compile_cache.preload([(shapes, statics, None)]).wait()
  assert (done.kernels, done.error) == (2, None) and done.seconds > 0
  # Two programs' calls are merged: the same program twice still makes two calls.
  assert compile_cache.preload([(shapes, statics, None)] * 2).wait().kernels == 2
  assert compile_cache.preload([(shapes, {"program": "another"}, None)]) is None
  np.testing.assert_allclose(run(*args)[0], jnp.linalg.cholesky(args[0] @ args[0].T +
                                                                 3 * jnp.eye(4)), rtol=1e-6)


def test_the_preloads_compiles_are_not_counted_as_the_programs(cache):
  """compile_events counts the calling program's compiles and cache hits: the preload's
  replay, on its own thread beside the search's compile, is left out."""
  fn, args, statics = _program("counted")
  compile_cache.program(fn, args, statics)
  before = compile_cache.compile_events()
  done = compile_cache.preload([(args, statics, None)]).wait()
  assert done.error is None and done.seconds > 0
  assert compile_cache.compile_events() == before
  jax.jit(lambda x: x * 3).lower(jnp.ones(3)).compile()  # this thread's still count
  assert compile_cache.compile_events()["compiles"] > before["compiles"]


def test_preload_of_a_damaged_or_failing_store(cache):
  fn, args, statics = _program("damaged")
  compile_cache.program(fn, args, statics)
  (stored,) = (cache / "onerec-exported").glob("*.kernels.json")
  data = json.loads(stored.read_text())
  stored.write_text("{not json")
  assert compile_cache.preload([(args, statics, None)]) is None
  stored.write_text(json.dumps({**data, "format": compile_cache.KERNELS_FORMAT + 1}))
  assert compile_cache.preload([(args, statics, None)]) is None
  # A call that cannot be made: a warning, the error kept, nothing raised.
  data["calls"][0]["attributes"] = [["call_target_name", '"no_such_kernel_target"']]
  stored.write_text(json.dumps(data))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    done = compile_cache.preload([(args, statics, None)]).wait()
  assert done.error and done.kernels == 2
  assert any("preloading the search's kernels failed" in str(w.message) for w in caught)


def test_no_kernels_are_stored_with_the_cache_off(monkeypatch):
  assert not jax.config.jax_compilation_cache_dir
  monkeypatch.setattr(compile_cache, "PRELOADED_CALLS", (CHOLESKY,))
  fn, args, statics = _program("off")
  assert compile_cache.program(fn, args, statics)[1] == "traced"
  assert compile_cache.preload([(args, statics, None)]) is None


def test_a_program_compiled_before_the_cache_was_on_is_stored_once_it_is(cache):
  fn, args, statics = _program("later")
  jax.config.update("jax_compilation_cache_dir", None)
  assert compile_cache.program(fn, args, statics)[1] == "traced"
  jax.config.update("jax_compilation_cache_dir", str(cache))
  assert not (cache / "onerec-exported").exists()
  assert compile_cache.program(fn, args, statics)[1] == "traced"  # not the memo's
  assert len(list((cache / "onerec-exported").glob("*.kernels.json"))) == 1
  assert compile_cache.program(fn, args, statics)[1] == "process"
  assert compile_cache.preload([(args, statics, None)]).wait().kernels == 2


def test_generate_preload_finds_what_warmup_stored(cache):
  """The search's key from the weights' shapes (checkpoint.abstract_params) is the key
  warmup stores under with the weights themselves."""
  from onerec_jax.checkpoint import abstract_params
  from onerec_jax.model import init_params
  cfg = preset("tiny")
  kw = dict(beam_width=4, batch_buckets=(2,))
  assert gen.preload(abstract_params(cfg), cfg, **kw) is None
  gen.warmup(init_params(cfg, jax.random.key(0)), cfg, **kw)
  done = gen.preload(abstract_params(cfg), cfg, **kw).wait()
  assert (done.kernels, done.error) == (0, None)  # the CPU search has no GPU kernels
  assert gen.preload(abstract_params(cfg), cfg, beam_width=5, batch_buckets=(2,)) is None


def _generate(cache, out, *extra):
  cmd = [sys.executable, "-m", "onerec_jax", "generate", "--preset", "demo", "--fp8",
         "--random", "4", "--batch-size", "4", "--beam-width", "16", "--compile-cache",
         str(cache), "--output", str(out), *extra]
  done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(out.read_text())


@pytest.mark.gpu
def test_preload_prepares_the_gpu_kernels(tmp_path):
  """A cold process stores the FP8 search's Triton and Mosaic GPU calls; a restarted one
  compiles and runs them on zeros while its weights load, then gives the cold results."""
  cold = _generate(tmp_path / "cc", tmp_path / "a.json")
  (stored,) = (tmp_path / "cc" / "onerec-exported").glob("*.kernels.json")
  calls = json.loads(stored.read_text())["calls"]
  assert {"triton_kernel_call", "mosaic_gpu_v2"} <= {c["target"] for c in calls}
  warm = _generate(tmp_path / "cc", tmp_path / "b.json")
  off = _generate(tmp_path / "cc", tmp_path / "c.json", "--no-preload")
  assert cold["timing"]["preload"] is None and off["timing"]["preload"] is None
  preload = warm["timing"]["preload"]
  assert preload["kernels"] == len(calls) and preload["error"] is None, preload
  assert warm["timing"]["program"] == "exported"
  assert warm["results"] == cold["results"] == off["results"]


def test_a_process_exiting_early_waits_for_its_preload(tmp_path):
  """jax clears its backends at exit; a preload still running then is waited for first."""
  script = f"""
import atexit, sys
import jax, jax.numpy as jnp
sys.path.insert(0, {str(ROOT / "tests")!r})
import test_preload as t
from onerec_jax.generate import compile_cache
compile_cache.enable({str(tmp_path / "cc")!r})
compile_cache.PRELOADED_CALLS = (t.CHOLESKY,)
fn, args, statics = t._program("exit")
compile_cache.program(fn, args, statics)
seen = []
atexit.register(lambda: print("done at exit:", seen[0].seconds is not None))
seen.append(compile_cache.preload([(args, statics, None)]))
sys.exit(0)
"""
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        cwd=ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "done at exit: True" in done.stdout, done.stdout
