"""Damaged and wrong checkpoint files fail as CheckpointError naming the file, never
half-loaded: a non-float tensor in a source, a truncated or garbage safetensors file, a
refused pickle, a truncated data file inside a converted Orbax checkpoint; the temporary
folders of killed conversions are removed by the next save (only those whose process is
gone)."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from helpers import state_dict_numpy, torch_model
from onerec_jax.checkpoint import CheckpointError, convert, load
from onerec_jax.config import preset

CFG = preset("tiny")
INT_TENSOR = "layers.1.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def state():
  return state_dict_numpy(torch_model(CFG, seed=13))


def _source(tmp_path, tensors, name="model.safetensors"):
  src = tmp_path / "src"
  src.mkdir()
  if name.endswith(".safetensors"):
    save_file(tensors, str(src / name))
  else:
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, src / name)
  (src / "config.json").write_text(CFG.to_json())
  return src


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_integer_tensor_is_refused_by_name(tmp_path, state, name):
  """An int8 tensor where a float weight belongs (its values would be truncated
  silently) is refused, naming the tensor and its dtype; nothing is written."""
  bad = dict(state)
  bad[INT_TENSOR] = np.clip(state[INT_TENSOR] * 100, -127, 127).astype(np.int8)
  src = _source(tmp_path, bad, name)
  with pytest.raises(CheckpointError, match=rf"not floating-point tensors \(1; expected one "
                     rf"of \['float16', 'bfloat16', 'float32', 'float64'\]\): "
                     rf"\['{INT_TENSOR}: int8'\]"):
    convert(src, tmp_path / "jax", progress=False)
  assert not (tmp_path / "jax").exists()
  with pytest.raises(CheckpointError, match=f"{INT_TENSOR}: int8"):
    load(src)  # the in-memory conversion refuses it too


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_safetensors_file_names_the_file(tmp_path, state, damage):
  src = _source(tmp_path, state)
  path = src / "model.safetensors"
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"\x07garbage" * 9)
  with pytest.raises(CheckpointError, match=rf"{path}: cannot read the safetensors file"):
    load(src)


def test_refused_pickle_is_a_checkpoint_error(tmp_path):
  class Payload:
    def __reduce__(self):
      return (os.system, ("echo executed",))

  torch.save({"x": Payload()}, tmp_path / "model.bin")
  (tmp_path / "config.json").write_text(CFG.to_json())
  with pytest.raises(CheckpointError, match=r"model.bin: not loaded .*never executed"):
    load(tmp_path / "model.bin")


def _largest_file(folder: pathlib.Path) -> pathlib.Path:
  return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncated", "emptied"])
def test_damaged_orbax_data_file_is_a_checkpoint_error(tmp_path, state, damage):
  """A data file under params/ cut short raises CheckpointError naming the params folder
  (orbax raised a raw ValueError: OUT_OF_RANGE), and nothing is returned."""
  dest = convert(_source(tmp_path, state), tmp_path / "jax", progress=False)
  data = _largest_file(dest / "params")
  assert data.stat().st_size > 100_000  # the tensors' data, not a metadata file
  size = data.stat().st_size
  with open(data, "r+b") as f:
    f.truncate(size // 2 if damage == "truncated" else 0)
  with pytest.raises(CheckpointError, match=rf"{dest / 'params'}: cannot restore the "
                     r"parameters \(.*\); convert the checkpoint again"):
    load(dest)


def _dead_pid() -> int:
  """The id of a process that has exited (and been reaped)."""
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()
  return child.pid


def test_next_save_removes_partials_of_dead_processes_only(tmp_path, state):
  src = _source(tmp_path, state)
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    dead_partial = tmp_path / f".jax.partial-{_dead_pid()}"
    live_partial = tmp_path / f".jax.partial-{live.pid}"
    other = tmp_path / f".other.partial-{_dead_pid()}"  # another destination's
    for folder in (dead_partial, live_partial, other):
      (folder / "params").mkdir(parents=True)
    convert(src, tmp_path / "jax", progress=False)
    assert not dead_partial.exists()
    assert live_partial.is_dir() and other.is_dir()
    assert load(tmp_path / "jax").config == CFG
  finally:
    live.kill()
    live.wait()


def test_failed_restore_drops_only_the_late_reads_reports(tmp_path, state, monkeypatch):
  """After a failed restore, tensorstore's reads still in flight report "Event loop is
  closed" into orbax's closed loop at random moments; those reports are dropped (they
  would follow the one-line error), any other unraisable error still reaches the hook."""
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  dest = convert(_source(tmp_path, state), tmp_path / "jax", progress=False)
  data = _largest_file(dest / "params")
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
  with pytest.raises(CheckpointError):
    load(dest)
  late = sys.unraisablehook
  for _ in range(2):  # a second failure does not wrap the hook again
    with pytest.raises(CheckpointError):
      load(dest)
    assert sys.unraisablehook is late
  seen.clear()
  report = lambda e: type("U", (), {"exc_value": e, "exc_type": type(e)})()
  late(report(RuntimeError("Event loop is closed")))
  other = report(RuntimeError("something else"))
  late(other)
  assert seen == [other]
