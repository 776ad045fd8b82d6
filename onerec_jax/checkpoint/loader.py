"""`load`: any checkpoint a user points at (a converted onerec-jax checkpoint, FP16 or
FP8, or a PyTorch-format source converted in memory), or the shipped demo, whose
converted copy is cached in the user cache folder and refreshed when the shipped files
change."""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any, NamedTuple

import onerec_checkpoints

from onerec_jax import quant
from onerec_jax.cache import cache_dir
from onerec_jax.checkpoint import store
from onerec_jax.checkpoint.convert import convert, read_config, torch_to_jax
from onerec_jax.checkpoint.source import CheckpointError, open_source
from onerec_jax.config import ModelConfig as Config

DEMO_SOURCE = onerec_checkpoints.DEMO  # the shipped PyTorch-format FP16 demo


class Checkpoint(NamedTuple):
  """A loaded model: its config, parameters (QArrays where FP8), the FP8 rules it was
  quantized with (None: unquantized) and where it came from."""

  config: Config
  params: Any
  rules: quant.Rules | None
  source: str


def demo_converted(precision: str = "fp16") -> pathlib.Path:
  """Where the demo's converted copy is cached."""
  return cache_dir() / "demo" / precision


def _demo_fingerprint(source: pathlib.Path) -> str:
  """The shipped demo's files by content, recorded as the converted copy's source."""
  digest = hashlib.sha256()
  for name in ("config.json", "model.safetensors"):
    digest.update((source / name).read_bytes())
  return f"{source} sha256:{digest.hexdigest()}"


def load_demo(precision: str = "fp16") -> Checkpoint:
  """The shipped demo, converted on first use (and again whenever the shipped files
  change) into the user cache folder."""
  dest = demo_converted(precision)
  fingerprint = _demo_fingerprint(DEMO_SOURCE)
  fresh = (dest / store.METADATA_NAME).exists() and (
      store.read_metadata(dest)["source"] == fingerprint)
  if not fresh:
    convert(DEMO_SOURCE, dest, precision=precision, overwrite=True, progress=False,
            source_label=fingerprint)
  config, params = store.restore(dest)
  return Checkpoint(config, params, store.load_rules(dest), f"the shipped demo ({DEMO_SOURCE})")


def load(path: str | os.PathLike | None = None, *, unquantized: bool = False
         ) -> Checkpoint:
  """The checkpoint at path (None: the shipped demo). unquantized: refuse an FP8
  checkpoint (commands that measure FP8 against the 16-bit weights need those)."""
  if path is None:
    ckpt = load_demo()
  else:
    path = pathlib.Path(path)
    if not path.exists():
      raise CheckpointError(f"checkpoint not found: {path}")
    if store.is_converted(path):
      config, params = store.restore(path)
      ckpt = Checkpoint(config, params, store.load_rules(path), str(path))
    else:
      config = read_config(path)
      ckpt = Checkpoint(config, torch_to_jax(open_source(path), config), None, str(path))
  if unquantized and ckpt.rules is not None:
    raise CheckpointError(f"{ckpt.source} is an FP8 checkpoint; this command needs the "
                          f"unquantized (FP16) one it was converted from")
  return ckpt
