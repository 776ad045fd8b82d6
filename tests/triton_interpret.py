"""Runs a module's @triton.jit kernels in Triton's CPU interpreter, on torch CPU tensors.

This is how CI (no GPU) tests the Triton kernels that jax-triton launches on the GPU: the
same kernel source, launched as kernel[grid](...). triton.jit picks the interpreter when
the function is decorated, so the module is loaded afresh under TRITON_INTERPRET=1, as a
private copy that leaves the imported (compiled) module alone.
"""

import importlib.util
import os

import pytest


def interpreted(module_name: str):
  """A private copy of module_name whose kernels run in the interpreter; skips the test
  where torch or triton is missing."""
  pytest.importorskip("torch")
  pytest.importorskip("triton")
  spec = importlib.util.find_spec(module_name)
  module = importlib.util.module_from_spec(spec)
  previous = os.environ.get("TRITON_INTERPRET")
  os.environ["TRITON_INTERPRET"] = "1"
  try:
    spec.loader.exec_module(module)
  finally:
    if previous is None:
      del os.environ["TRITON_INTERPRET"]
    else:
      os.environ["TRITON_INTERPRET"] = previous
  return module
