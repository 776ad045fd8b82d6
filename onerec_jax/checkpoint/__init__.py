"""Checkpoints: PyTorch-format sources, conversion (and export back), the Orbax store, and
the shipped demo."""

import hashlib
import pathlib

from onerec_jax.checkpoint.convert import (
    check_source,
    convert,
    export,
    jax_to_torch,
    read_config,
    torch_to_jax,
)
from onerec_jax.checkpoint.source import CheckpointError, open_source
from onerec_jax.checkpoint import store
from onerec_jax.checkpoint.store import (
    abstract_params,
    load,
    load_rules,
    read_metadata,
    save,
)

CHECKPOINTS_DIR = pathlib.Path(__file__).resolve().parents[2] / "checkpoints"
DEMO_SOURCE = CHECKPOINTS_DIR / "demo"  # shipped PyTorch-format FP16 checkpoint
DEMO_CONVERTED = CHECKPOINTS_DIR / "converted" / "demo"  # git-ignored


def _demo_fingerprint() -> str:
  """The shipped demo's files by content, recorded as the converted copy's source."""
  digest = hashlib.sha256()
  for name in ("config.json", "model.safetensors"):
    digest.update((DEMO_SOURCE / name).read_bytes())
  return f"{DEMO_SOURCE} sha256:{digest.hexdigest()}"


def load_demo(precision: str = "fp16"):
  """(config, params) of the shipped demo, converted on first use and again whenever the
  shipped files change."""
  dest = DEMO_CONVERTED if precision == "fp16" else DEMO_CONVERTED.with_name(
      f"demo-{precision}")
  source = _demo_fingerprint()
  fresh = (dest / store.METADATA_NAME).exists() and read_metadata(dest)["source"] == source
  if not fresh:
    convert(DEMO_SOURCE, dest, precision=precision, overwrite=True, progress=False,
            source_label=source)
  return load(dest)


__all__ = ["CHECKPOINTS_DIR", "CheckpointError", "DEMO_CONVERTED", "DEMO_SOURCE",
           "abstract_params", "check_source", "convert", "export", "jax_to_torch", "load",
           "load_demo", "load_rules", "open_source", "read_config", "read_metadata", "save",
           "torch_to_jax"]
