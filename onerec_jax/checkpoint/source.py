"""Readers for PyTorch-format checkpoints: a .safetensors file, a sharded safetensors
folder with its index json, or a .pt/.bin state_dict (torch.load with weights_only=True,
only when torch is installed; untrusted pickles are never executed).

Tensors are read lazily, one at a time, as numpy arrays.
"""

import contextlib
import json
import pathlib
import re
from typing import Iterator, Protocol

import numpy as np
from safetensors import SafetensorError, safe_open

from onerec_jax.errors import InputError

INDEX_NAME = "model.safetensors.index.json"
_TORCH_SUFFIXES = (".pt", ".bin", ".pth")
# safetensors dtype codes -> numpy-style names (the ones a checkpoint may hold)
_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32",
                       "F64": "float64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
                       "I8": "int8", "U8": "uint8", "I16": "int16", "I32": "int32",
                       "I64": "int64", "BOOL": "bool"}


class CheckpointError(InputError):
  """A checkpoint that cannot be converted or loaded; the message names what is wrong."""


class Source(Protocol):
  def names(self) -> list[str]: ...
  def shape(self, name: str) -> tuple[int, ...]: ...
  def dtype(self, name: str) -> str: ...
  def get(self, name: str) -> np.ndarray: ...


@contextlib.contextmanager
def _reading(path: pathlib.Path) -> Iterator[None]:
  """Turns a damaged safetensors file's errors into a CheckpointError naming it."""
  try:
    yield
  except (SafetensorError, OSError) as e:
    raise CheckpointError(f"{path}: cannot read the safetensors file ({e}); is it "
                          f"truncated or not a safetensors file?") from None


class SafetensorsSource:
  """One or more safetensors files; `files` maps each tensor name to its file."""

  def __init__(self, files: dict[str, pathlib.Path]):
    self._files = files
    self._handles: dict[pathlib.Path, object] = {}

  def _handle(self, name: str):
    path = self._files[name]
    if path not in self._handles:
      with _reading(path):
        self._handles[path] = safe_open(str(path), framework="numpy")
    return self._handles[path]

  def names(self) -> list[str]:
    return list(self._files)

  def shape(self, name: str) -> tuple[int, ...]:
    with _reading(self._files[name]):
      return tuple(self._handle(name).get_slice(name).get_shape())

  def dtype(self, name: str) -> str:
    with _reading(self._files[name]):
      code = self._handle(name).get_slice(name).get_dtype()
    return _SAFETENSORS_DTYPES.get(code, code)

  def get(self, name: str) -> np.ndarray:
    with _reading(self._files[name]):
      return self._handle(name).get_tensor(name)


class StateDictSource:
  """An in-memory {name: array} mapping (a torch .pt/.bin file, or arrays in a test)."""

  def __init__(self, tensors: dict[str, np.ndarray]):
    self._tensors = tensors

  def names(self) -> list[str]:
    return list(self._tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._tensors[name].shape)

  def dtype(self, name: str) -> str:
    return np.dtype(self._tensors[name].dtype).name

  def get(self, name: str) -> np.ndarray:
    return self._tensors[name]


def _safetensors_names(path: pathlib.Path) -> list[str]:
  with _reading(path), safe_open(str(path), framework="numpy") as f:
    return list(f.keys())


def _torch_state_dict(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch  # only for .pt/.bin sources; never needed by the JAX path
  except ImportError:
    raise CheckpointError(f"{path}: reading .pt/.bin needs torch installed; "
                          "convert it to .safetensors or install torch") from None
  try:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # pickle.UnpicklingError for refused objects, RuntimeError, ...
    lines = [l.strip() for l in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines()]
    why = next((l for l in lines if "Unsupported global" in l), None) or next(
        (l for l in lines if l), type(e).__name__)
    why = why.split(". ")[0][:200]  # the first sentence names what was refused
    raise CheckpointError(f"{path}: not loaded ({why}); only plain tensor "
                          f"state_dicts are read, pickled objects are never "
                          f"executed") from None
  if not isinstance(state, dict):
    raise CheckpointError(f"{path}: expected a state_dict (dict of tensors), got "
                          f"{type(state).__name__}")
  out = {}
  for name, t in state.items():
    if not isinstance(t, torch.Tensor):
      raise CheckpointError(f"{path}: entry {name!r} is {type(t).__name__}, not a tensor")
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: go through its bit pattern
      import ml_dtypes
      out[name] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    else:
      out[name] = t.numpy()
  return out


def open_source(path: str | pathlib.Path) -> Source:
  """Opens a PyTorch-format checkpoint by its path (file or folder)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise CheckpointError(f"checkpoint not found: {path}")
  if path.is_dir():
    index = path / INDEX_NAME
    if index.exists():
      try:
        weight_map = json.loads(index.read_text()).get("weight_map")
      except (ValueError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a JSON object ({e})") from None
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no 'weight_map' object")
      files = {name: path / shard for name, shard in weight_map.items()}
      missing = sorted({str(f) for f in files.values() if not f.exists()})
      if missing:
        raise CheckpointError(f"{index}: shard files missing: {missing}")
      return SafetensorsSource(files)
    singles = sorted(path.glob("*.safetensors"))
    pickles = sorted(p for p in path.iterdir() if p.suffix in _TORCH_SUFFIXES)
    if len(singles) == 1:
      path = singles[0]
    elif not singles and len(pickles) == 1:
      path = pickles[0]
    else:
      raise CheckpointError(f"{path}: expected one .safetensors file, {INDEX_NAME}, or one "
                            f".pt/.bin file; found {[p.name for p in singles + pickles]}")
  if path.suffix == ".safetensors":
    return SafetensorsSource({name: path for name in _safetensors_names(path)})
  if path.suffix in _TORCH_SUFFIXES:
    return StateDictSource(_torch_state_dict(path))
  raise CheckpointError(f"{path}: unknown checkpoint format (expected .safetensors, a "
                        "sharded safetensors folder, .pt or .bin)")


def config_path_for(path: str | pathlib.Path) -> pathlib.Path:
  """config.json beside a checkpoint file, or inside a checkpoint folder."""
  path = pathlib.Path(path)
  return (path if path.is_dir() else path.parent) / "config.json"
