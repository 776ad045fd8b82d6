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


@pytest.fixture(autouse=True, scope="session")
def _user_cache(tmp_path_factory):
  """The user cache folder (the demo's converted copy) in a temporary folder, and jax's
  persistent compilation cache off unless a test turns it on: tests leave nothing in
  the home folder and share no compiled state through the disk."""
  mp = pytest.MonkeyPatch()
  mp.setenv("ONEREC_JAX_CACHE", str(tmp_path_factory.mktemp("user-cache")))
  mp.setenv("ONEREC_JAX_COMPILE_CACHE", "off")
  yield
  mp.undo()


@pytest.fixture
def compile_cache_dir(tmp_path):
  """jax's persistent compilation cache folder set to a fresh one for the test only."""
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "cc"))
  yield tmp_path / "cc"
  jax.config.update("jax_compilation_cache_dir", before)


def pytest_collection_modifyitems(config, items):
  if _has_gpu():
    return
  skip = pytest.mark.skip(reason="needs an NVIDIA GPU (marked gpu)")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)
