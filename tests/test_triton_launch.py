"""triton_launch: the custom calls of every Triton entry point against their kernels'
TTIR (tests/triton_lowering.py, in a process of its own), launches without programs, the
errors. The kernels' values are tested in Triton's interpreter (test_*_triton_interpret,
test_quantize) and on the GPU (marker gpu)."""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from onerec_kernels import triton_launch
from onerec_kernels.quantize import triton_gpu as quantize

pytest.importorskip("triton")
HERE = pathlib.Path(__file__).parent


def test_every_triton_call_matches_its_kernel():
  env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
  done = subprocess.run([sys.executable, str(HERE / "triton_lowering.py")], env=env,
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-4000:]
  names = json.loads(done.stdout.splitlines()[-1])
  assert names["quantize"] == ["_quantize_kernel"] * 3
  assert names["attention_one_split"] == names["attention_splits"] == ["_attention_kernel"]
  assert {"_chunk_max_kernel", "_kth_kernel", "_filter_kernel", "_counts_kernel",
          "_rank_kernel", "_beam_stats_kernel", "_beam_filter_kernel", "_beam_scores_kernel",
          "_router_kernel"} <= set(names["top_k"]), names["top_k"]
  assert names["dequant_gemm"] == ["_dequant_gemm_kernel"]
  assert names["exported"] == ["_quantize_kernel"]


def test_a_grid_without_programs_gives_zeros_and_no_launch():
  out = triton_launch.triton_call(
      quantize._quantize_kernel, jnp.zeros((0, 128), jnp.bfloat16), out=(
          triton_launch.shape((0, 128), jnp.float8_e4m3fn),
          triton_launch.shape((4,), jnp.float32)), grid=(0, 2))
  assert out[0].shape == (0, 128) and np.array_equal(out[1], np.zeros(4))


def test_errors():
  with pytest.raises(TypeError, match="no Triton pointer type for arrays of complex64"):
    triton_launch.pointer_type(jnp.complex64)
  with pytest.raises(ValueError, match="no parameter %z_ptr in the TTIR of f"):
    triton_launch.insert_parameters("tt.func public @f(%x_ptr: !tt.ptr<f32>) {", "f",
                                    "z_ptr", ("*i32",))
  text = "tt.func public @f(%x_ptr: !tt.ptr<f32>, %y_ptr: !tt.ptr<i32>) {"
  assert triton_launch.insert_parameters(text, "f", "y_ptr", ("*u32", "*fp8e4nv")) == (
      "tt.func public @f(%x_ptr: !tt.ptr<f32>, %unused_0: !tt.ptr<i32> "
      "{tt.divisibility = 16 : i32}, %unused_1: !tt.ptr<f8E4M3FN> "
      "{tt.divisibility = 16 : i32}, %y_ptr: !tt.ptr<i32>) {")
