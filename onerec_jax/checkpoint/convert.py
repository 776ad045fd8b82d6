"""Offline conversion of a PyTorch FP16 checkpoint to a JAX (Orbax) checkpoint, and the
inverse export to the PyTorch format.

Everything is checked before anything is written: missing, unexpected and wrongly shaped
tensors are reported together, by name; a NaN or Inf weight fails naming the tensor.
"""

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from tqdm import tqdm

from onerec_jax import quant
from onerec_jax.checkpoint import mapping, store
from onerec_jax.model import default_rules
from onerec_jax.checkpoint.source import (CheckpointError, Source, config_path_for,
                                          open_source)
from onerec_jax.config import ConfigError, Qwen3Config, config_from_dict
from onerec_jax.config import ModelConfig as Config

# What a source tensor may hold: every value converts exactly to the parameter dtype or
# rounds as a 16-bit float would (never an integer truncated silently).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _flat_shapes(tree) -> dict[str, jax.ShapeDtypeStruct]:
  return {"/".join(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _part_rows(shape: tuple[int, ...], entry: mapping.Entry) -> tuple[int, ...]:
  """Axis-0 size of each PyTorch part of one (expert's) concatenation."""
  parts = len(entry.sources[0])
  return entry.part_rows or (shape[0] // parts,) * parts


def _part_shapes(jax_shape: tuple[int, ...], entry: mapping.Entry) -> list[tuple[int, ...]]:
  """Shape each PyTorch part must have: stacked experts drop axis 0, concatenated parts
  split the (remaining) axis 0 (evenly unless the entry says how)."""
  shape = jax_shape[1:] if entry.stacked else jax_shape
  if not shape:
    return [shape]
  return [(rows,) + tuple(shape[1:]) for rows in _part_rows(shape, entry)]


def check_source(source: Source, config: Config) -> list[mapping.Entry]:
  """Checks names and shapes against the config; raises one CheckpointError listing every
  missing, unexpected and wrongly shaped tensor. Returns the expanded name map."""
  entries = mapping.entries(config)
  expected = _flat_shapes(store.abstract_params(config))
  have = set(source.names())
  wanted: dict[str, tuple[int, ...]] = {}
  for e in entries:
    shapes = _part_shapes(expected[e.jax].shape, e)
    for group in e.sources:
      wanted.update(zip(group, shapes))
  missing = sorted(set(wanted) - have)
  unexpected = sorted(have - set(wanted))
  bad_shapes = sorted(f"{n}: {source.shape(n)} (expected {s})"
                      for n, s in wanted.items() if n in have and source.shape(n) != s)
  bad_dtypes = sorted(f"{n}: {source.dtype(n)}" for n in wanted
                      if n in have and source.dtype(n) not in FLOAT_DTYPES)
  problems = []
  if missing:
    problems.append(f"missing tensors ({len(missing)}): {missing}")
  if unexpected:
    problems.append(f"unexpected tensors ({len(unexpected)}): {unexpected}")
  if bad_shapes:
    problems.append(f"wrong shapes ({len(bad_shapes)}): {bad_shapes}")
  if bad_dtypes:
    problems.append(f"not floating-point tensors ({len(bad_dtypes)}; expected one of "
                    f"{list(FLOAT_DTYPES)}): {bad_dtypes}")
  if problems:
    raise CheckpointError("checkpoint does not match the config:\n  " + "\n  ".join(problems))
  return entries


def _read(source: Source, name: str, dtype) -> np.ndarray:
  t = source.get(name)
  if not np.all(np.isfinite(t.astype(np.float32))):
    bad = int(np.size(t) - np.count_nonzero(np.isfinite(t.astype(np.float32))))
    raise CheckpointError(f"tensor {name!r} has {bad} NaN/Inf values")
  return t.astype(dtype, copy=False)


def torch_to_jax(source: Source, config: Config, *, progress: bool = False
                 ) -> dict[str, Any]:
  """Maps a PyTorch-format state dict to the JAX parameter tree (numpy leaves in
  config.param_dtype), after check_source."""
  entries = check_source(source, config)
  dtype = np.dtype(config.params_dtype)
  flat = {}
  for e in tqdm(entries, desc="converting", unit="tensor", disable=not progress):
    groups = [np.concatenate([_read(source, n, dtype) for n in group], axis=0)
              if len(group) > 1 else _read(source, group[0], dtype) for group in e.sources]
    flat[e.jax] = np.stack(groups) if e.stacked else groups[0]
  return _unflatten(flat)


def jax_to_torch(params: Any, config: Config) -> dict[str, np.ndarray]:
  """The inverse map: JAX parameter tree -> PyTorch state dict (numpy arrays)."""
  flat = {k: np.asarray(v) for k, v in _flat_shapes(params).items()}
  if any(isinstance(v, quant.QArray) for v in jax.tree.leaves(
      params, is_leaf=lambda x: isinstance(x, quant.QArray))):
    raise CheckpointError("export needs unquantized parameters; this tree holds FP8 QArrays")
  out = {}
  for e in mapping.entries(config):
    if e.jax not in flat:
      raise CheckpointError(f"parameter {e.jax!r} missing from the tree")
    value = flat[e.jax]
    groups = list(value) if e.stacked else [value]
    for group, names in zip(groups, e.sources):
      cuts = np.cumsum(_part_rows(group.shape, e))[:-1]
      for name, part in zip(names, np.split(group, cuts, axis=0)):
        out[name] = np.ascontiguousarray(part)
  return out


SID_LAYOUT_NAME = "sid_tokens.json"  # a Qwen3 source's semantic-ID token layout


def export(params: Any, config: Config, path: str | os.PathLike) -> pathlib.Path:
  """Writes params as a PyTorch-format safetensors file plus the config in folder `path`:
  the Config's JSON as config.json (OneRec-V2), or Hugging Face's config.json and the
  semantic-ID layout (Qwen3), what convert reads back."""
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  safetensors.numpy.save_file(jax_to_torch(params, config), str(path / "model.safetensors"))
  if config.family == "qwen3":
    hf, layout = config.to_hf()
    (path / "config.json").write_text(json.dumps(hf, indent=2))
    (path / SID_LAYOUT_NAME).write_text(json.dumps(layout, indent=2))
  else:
    (path / "config.json").write_text(config.to_json())
  return path


def read_config(source_path: str | os.PathLike,
                sid_layout: str | os.PathLike | None = None) -> Config:
  """The config.json that sits beside (or inside) a checkpoint: a converted checkpoint,
  a OneRec-V2 source, or a Hugging Face Qwen3 source, whose semantic-ID token layout is
  read from sid_layout or from sid_tokens.json beside its config.json (docs/qwen3.md)."""
  if not pathlib.Path(source_path).exists():
    raise CheckpointError(f"checkpoint not found: {source_path}")
  path = config_path_for(source_path)
  if not path.exists():
    raise CheckpointError(f"no config.json beside {source_path} (looked at {path}); "
                          f"docs/bring_your_model.md lists its fields")
  try:
    d = json.loads(path.read_text())
    if not (isinstance(d, dict) and "model_type" in d):
      return config_from_dict(d)
  except (ConfigError, OSError, ValueError) as e:
    raise CheckpointError(f"{path}: {e}") from None
  layout = pathlib.Path(sid_layout) if sid_layout else path.parent / SID_LAYOUT_NAME
  if not layout.exists():
    raise CheckpointError(f"{path} is a Hugging Face {d['model_type']!r} config; its "
                          f"semantic-ID token layout is needed too: {layout} not found "
                          f"(docs/qwen3.md)")
  try:
    return Qwen3Config.from_hf(d, json.loads(layout.read_text()))
  except (ConfigError, OSError, ValueError) as e:
    raise CheckpointError(f"{path} with {layout}: {e}") from None


def convert(source_path: str | os.PathLike, dest: str | os.PathLike, *,
            config: Config | None = None, precision: str = "fp16",
            rules: "quant.Rules | None" = None, overwrite: bool = False,
            progress: bool = True, source_label: str | None = None) -> pathlib.Path:
  """Converts a PyTorch-format checkpoint to a JAX checkpoint at `dest`.

  precision "fp8" quantizes offline with `rules` (default: the paper's rule set for the
  config) and records them in the checkpoint. source_label is what the metadata records
  as the source (default: the source path).
  """
  if precision not in store.PRECISIONS:
    raise CheckpointError(f"precision {precision!r} not in {store.PRECISIONS}")
  if rules is not None and precision != "fp8":
    raise CheckpointError("quantization rules given but precision is not 'fp8'")
  store.check_destination(dest, overwrite)  # before any work
  config = config or read_config(source_path)
  params = torch_to_jax(open_source(source_path), config, progress=progress)
  if precision == "fp8":
    rules = rules or default_rules(config)
    params = quant.quantize_params(params, rules)
  return store.save(dest, config, params, rules=rules,
                    source=source_label or str(source_path), overwrite=overwrite)

