"""Readers for PyTorch-format checkpoints: a .safetensors file, a sharded safetensors
folder with its index json, or a .pt/.bin state_dict (torch.load with weights_only=True,
only when torch is installed; untrusted pickles are never executed).

Tensors are read lazily, one at a time, as numpy arrays.
"""

import json
import pathlib
from typing import Iterator, Protocol

import numpy as np
from safetensors import safe_open

INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
  """A checkpoint that cannot be converted or loaded; the message names what is wrong."""


class Source(Protocol):
  def names(self) -> list[str]: ...
  def shape(self, name: str) -> tuple[int, ...]: ...
  def get(self, name: str) -> np.ndarray: ...


class SafetensorsSource:
  """One or more safetensors files; `files` maps each tensor name to its file."""

  def __init__(self, files: dict[str, pathlib.Path]):
    self._files = files
    self._handles: dict[pathlib.Path, object] = {}

  def _handle(self, name: str):
    path = self._files[name]
    if path not in self._handles:
      self._handles[path] = safe_open(str(path), framework="numpy")
    return self._handles[path]

  def names(self) -> list[str]:
    return list(self._files)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handle(name).get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    return self._handle(name).get_tensor(name)


class StateDictSource:
  """An in-memory {name: array} mapping (a torch .pt/.bin file, or arrays in a test)."""

  def __init__(self, tensors: dict[str, np.ndarray]):
    self._tensors = tensors

  def names(self) -> list[str]:
    return list(self._tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._tensors[name].shape)

  def get(self, name: str) -> np.ndarray:
    return self._tensors[name]


def _safetensors_names(path: pathlib.Path) -> Iterator[str]:
  with safe_open(str(path), framework="numpy") as f:
    yield from f.keys()


def _torch_state_dict(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch  # only for .pt/.bin sources; never needed by the JAX path
  except ImportError:
    raise CheckpointError(f"{path}: reading .pt/.bin needs torch installed; "
                          "convert it to .safetensors or install torch") from None
  state = torch.load(str(path), map_location="cpu", weights_only=True)
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
      weight_map = json.loads(index.read_text()).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no 'weight_map' object")
      files = {name: path / shard for name, shard in weight_map.items()}
      missing = sorted({str(f) for f in files.values() if not f.exists()})
      if missing:
        raise CheckpointError(f"{index}: shard files missing: {missing}")
      return SafetensorsSource(files)
    singles = sorted(path.glob("*.safetensors"))
    if len(singles) == 1:
      path = singles[0]
    else:
      raise CheckpointError(f"{path}: expected one .safetensors file or {INDEX_NAME}, "
                            f"found {[p.name for p in singles]}")
  if path.suffix == ".safetensors":
    return SafetensorsSource({name: path for name in _safetensors_names(path)})
  if path.suffix in (".pt", ".bin", ".pth"):
    return StateDictSource(_torch_state_dict(path))
  raise CheckpointError(f"{path}: unknown checkpoint format (expected .safetensors, a "
                        "sharded safetensors folder, .pt or .bin)")


def config_path_for(path: str | pathlib.Path) -> pathlib.Path:
  """config.json beside a checkpoint file, or inside a checkpoint folder."""
  path = pathlib.Path(path)
  return (path if path.is_dir() else path.parent) / "config.json"
