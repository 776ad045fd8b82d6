"""Checks of the paths a command will write, made before it does any work."""

import os
import pathlib

from onerec_jax.errors import InputError


class OutputPathError(InputError):
  """An output path the command could not write."""


def writable_file(path: str | os.PathLike | None) -> pathlib.Path | None:
  """path as a file the command can write at the end: its folder is created now, and a
  folder in its place or an unwritable folder is refused now."""
  if path is None:
    return None
  path = pathlib.Path(path)
  if path.is_dir():
    raise OutputPathError(f"{path}: is a folder; give a file name")
  writable_folder(path.parent)
  if path.exists() and not os.access(path, os.W_OK):
    raise OutputPathError(f"{path}: exists and is not writable")
  return path


def writable_folder(path: str | os.PathLike) -> pathlib.Path:
  """path as a folder the command can write into, created now if missing."""
  path = pathlib.Path(path)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    raise OutputPathError(f"{path}: a file stands where a folder is needed") from None
  except OSError as e:
    raise OutputPathError(f"{path}: cannot create the folder ({e.strerror})") from None
  if not os.access(path, os.W_OK):
    raise OutputPathError(f"{path}: folder is not writable")
  return path
