"""The user cache folder: converted copies of the shipped demo and jax's persistent
compilation cache live here, never in the source tree or site-packages."""

import os
import pathlib

ENV = "ONEREC_JAX_CACHE"


def cache_dir() -> pathlib.Path:
  """$ONEREC_JAX_CACHE, else $XDG_CACHE_HOME/onerec-jax, else ~/.cache/onerec-jax."""
  if os.environ.get(ENV):
    return pathlib.Path(os.environ[ENV]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base).expanduser() / "onerec-jax"
