"""Shared test setup: GPU-only tests carry @pytest.mark.gpu and are skipped elsewhere; off
the GPU, Triton kernels run in Triton's CPU interpreter (see triton_interpret.py)."""

import os

import jax
import pytest


def _has_gpu() -> bool:
  try:
    return any(d.platform == "gpu" for d in jax.devices())
  except RuntimeError:
    return False


# triton.jit picks the interpreter when a function is decorated, triton's own library
# functions included: set before anything imports triton.
if not _has_gpu():
  os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items):
  if _has_gpu():
    return
  skip = pytest.mark.skip(reason="needs an NVIDIA GPU (marked gpu)")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)
