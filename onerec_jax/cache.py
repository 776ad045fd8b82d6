"""The user cache folder: converted copies of the shipped demo and jax's persistent
compilation cache live here, never in the source tree or site-packages. The compiled
programs and parameter trees kept across processes are keyed on source_fingerprint, so
another version of the code never reads them."""

import functools
import hashlib
import os
import pathlib
import tempfile

ENV = "ONEREC_JAX_CACHE"


def cache_dir() -> pathlib.Path:
  """$ONEREC_JAX_CACHE, else $XDG_CACHE_HOME/onerec-jax, else ~/.cache/onerec-jax."""
  if os.environ.get(ENV):
    return pathlib.Path(os.environ[ENV]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base).expanduser() / "onerec-jax"


@functools.cache
def source_fingerprint() -> str:
  """sha256 of the product's Python sources (onerec_jax and onerec_kernels): what one
  version of the code stored (a compiled program, a parameter tree) is reused only by
  that version."""
  import onerec_kernels
  digest = hashlib.sha256()
  for root in (pathlib.Path(__file__).resolve().parent,  # onerec_jax
               pathlib.Path(onerec_kernels.__file__).resolve().parent):
    for path in sorted(root.rglob("*.py")):
      digest.update(str(path.relative_to(root)).encode())
      digest.update(path.read_bytes())
  return digest.hexdigest()


def write_whole(path: pathlib.Path, data: bytes) -> bool:
  """Writes data at path whole or not at all: a temporary file of its own renamed into
  place, so that no reader, in any process or thread, sees part of it. False, leaving
  nothing behind, where the folder cannot be written (a cache then stays unfilled)."""
  tmp = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
    return True
  except OSError:
    if tmp is not None:
      pathlib.Path(tmp).unlink(missing_ok=True)
    return False
