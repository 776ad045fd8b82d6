"""Triton kernels on the CPU: conftest.py sets TRITON_INTERPRET=1 off the GPU, so their
@triton.jit functions run in Triton's interpreter on torch CPU tensors.

This is how CI (no GPU) tests the Triton kernels that jax-triton launches on the GPU: the
same kernel source, launched as kernel[grid](...). On a GPU the real kernels are tested
through JAX instead (tests marked gpu).
"""

import functools
import importlib
import os

import ml_dtypes
import numpy as np
import pytest


@functools.cache
def _exact_fp8_casts() -> None:
  """Makes the interpreter's casts to fp8e4nv round to nearest even, as the GPU's
  cvt.rn.satfinite does: Triton 3.7's interpreter drops the carry out of the mantissa
  (7.88 became 4.0) and rounds halves up. Other casts are left to the interpreter."""
  from triton.runtime import interpreter
  import triton.language as tl
  original = interpreter._convert_float

  def convert(data, src_dtype, dst_dtype, rounding_mode):
    if dst_dtype == tl.float8e4nv and src_dtype in (tl.float32, tl.float16):
      src = data.view(np.float32 if src_dtype == tl.float32 else np.float16)
      return src.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    return original(data, src_dtype, dst_dtype, rounding_mode)

  interpreter._convert_float = convert


def interpreted(module_name: str):
  """module_name, whose kernels run in the interpreter; skips the test on a GPU machine
  or where torch or triton is missing."""
  if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton interpreter tests run off the GPU")
  pytest.importorskip("torch")
  pytest.importorskip("triton")
  _exact_fp8_casts()
  return importlib.import_module(module_name)
