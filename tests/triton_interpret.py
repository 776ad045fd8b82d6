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


def exact_fma(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
  """fma(x, y, z) of float32 arrays rounded once, as the GPU's fma.rn.f32: the product is
  exact in float64, the sum's rounding error is recovered exactly (TwoSum), and the float64
  sum is rounded to odd before its rounding to float32 (53 >= 24 + 2 bits: no double
  rounding error)."""
  with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 is NaN, as on the GPU
    a = x.astype(np.float64) * y.astype(np.float64)
    b = z.astype(np.float64)
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    inexact_even = np.isfinite(s) & (err != 0) & (s.view(np.int64) & 1 == 0)
    s = np.where(inexact_even, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


@functools.cache
def _exact_fma() -> None:
  """Makes the interpreter's fma round once: it computes x * y + z in two float32 roundings,
  so kernels that rely on an exact fma residual (the quantizer's division) would not run
  as on the GPU."""
  from triton.runtime import interpreter

  def create_fma(self, x, y, z):
    if x.data.dtype == np.float32:
      return interpreter.TensorHandle(exact_fma(x.data, y.data, z.data), z.dtype.scalar)
    return interpreter.TensorHandle(x.data * y.data + z.data, z.dtype.scalar)

  interpreter.InterpreterBuilder.create_fma = create_fma


def interpreted(module_name: str):
  """module_name, whose kernels run in the interpreter; skips the test on a GPU machine
  or where torch or triton is missing."""
  if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton interpreter tests run off the GPU")
  pytest.importorskip("torch")
  pytest.importorskip("triton")
  _exact_fp8_casts()
  _exact_fma()
  return importlib.import_module(module_name)
