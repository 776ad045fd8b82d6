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


@functools.cache
def _bf16_dots() -> None:
  """Makes the interpreter's tl.dot read bfloat16 operands as their values: it keeps them
  as their uint16 bits and multiplied those (8-bit floats it converts first)."""
  from triton.runtime import interpreter
  import triton.language as tl
  original = interpreter.InterpreterBuilder.create_dot

  def as_f32(h):
    if h.dtype.scalar != tl.bfloat16:
      return h
    bits = h.data.astype(np.uint32) << 16
    return interpreter.TensorHandle(bits.view(np.float32), tl.float32)

  def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    return original(self, as_f32(a), as_f32(b), d, input_precision, max_num_imprecise_acc)

  interpreter.InterpreterBuilder.create_dot = create_dot


def interpreted(module_name: str):
  """module_name, whose kernels run in the interpreter; skips the test on a GPU machine
  or where torch or triton is missing."""
  if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton interpreter tests run off the GPU")
  pytest.importorskip("torch")
  pytest.importorskip("triton")
  _exact_fp8_casts()
  _exact_fma()
  _bf16_dots()
  return importlib.import_module(module_name)


def _to_torch(a: np.ndarray):
  """A torch CPU tensor of a's values: bfloat16 and float8 through their bits, bool as
  bytes (what a kernel loads from a JAX bool array)."""
  import torch
  a = np.array(a)  # a writable copy
  if a.dtype == ml_dtypes.bfloat16:
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
  if a.dtype == ml_dtypes.float8_e4m3fn:
    return torch.from_numpy(a.view(np.uint8)).view(torch.float8_e4m3fn)
  return torch.from_numpy(a.view(np.int8) if a.dtype == bool else a)


def _from_torch(t, dtype) -> np.ndarray:
  import torch
  if t.dtype in (torch.bfloat16, torch.float8_e4m3fn):
    return t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.uint8).numpy().view(dtype)
  return t.numpy()


def _poison(shape, dtype) -> np.ndarray:
  """An output buffer that shows every element a kernel leaves unwritten: NaN for floats,
  all bits set for integers."""
  dtype = np.dtype(dtype)
  if dtype.kind == "f" or dtype in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn):
    return np.full(shape, np.nan, np.float32).astype(dtype)
  return np.full(shape, -1).astype(dtype)


# (kernel name, constexprs) of every interpreted launch, in order: what ran, not what was
# traced (lax.switch traces every branch and runs one).
LAUNCHES: list[tuple[str, dict]] = []


def _interpreted_call(kernel, *args, out, grid, num_warps: int = 4, zeroed=(), **meta):
  """triton_launch.triton_call's contract, run in Triton's interpreter: a jax.pure_callback
  (so it also runs under jit, lax.switch and while_loop) that launches kernel[grid] on
  torch copies of the inputs and of the outputs, which start poisoned (_poison) unless
  zeroed."""
  import jax
  outs = out if isinstance(out, tuple) else (out,)

  def host(*arrays):
    LAUNCHES.append((kernel.__name__, meta))
    bufs = [np.zeros(o.shape, o.dtype) if i in zeroed else _poison(o.shape, o.dtype)
            for i, o in enumerate(outs)]
    tensors = [_to_torch(b) for b in bufs]
    kernel[grid](*map(_to_torch, arrays), *tensors, **meta)
    return tuple(_from_torch(t, o.dtype) for t, o in zip(tensors, outs))

  del num_warps  # the interpreter runs one program at a time
  result = jax.pure_callback(host, outs, *args)
  return result if isinstance(out, tuple) else result[0]


def triton_kernels_on_cpu(monkeypatch):
  """Runs onerec_kernels' Triton backends on the CPU: every launch goes through Triton's
  interpreter (_interpreted_call, poisoned outputs), and the implementations tables take
  Triton as available, so that the entry points' "triton" implementations run as on a
  Hopper GPU. Skips the test where interpreted() would."""
  from onerec_kernels import backend, triton_launch
  tg = interpreted("onerec_kernels.topk.triton_gpu")
  interpreted("onerec_kernels.quantize.triton_gpu")
  monkeypatch.setattr(triton_launch, "triton_call", _interpreted_call)
  monkeypatch.setattr(tg, "triton_call", _interpreted_call)
  monkeypatch.setattr(backend, "require_triton_gpu", lambda what: None)
  LAUNCHES.clear()
