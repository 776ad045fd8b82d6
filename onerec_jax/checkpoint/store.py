"""The converted checkpoint on disk: an Orbax tree, config.json and a metadata file that is
written last, in a folder renamed into place only when complete.

Layout of CHECKPOINT/:
  config.json              the Config
  params/                  Orbax (StandardCheckpointer) parameter tree
  onerec_checkpoint.json   format, precision, quantization rules, source; its presence
                           marks a complete checkpoint
"""

import datetime
import json
import os
import pathlib
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from onerec_jax import quant
from onerec_jax.checkpoint.source import CheckpointError
from onerec_jax.config import Config, ConfigError
from onerec_jax.model import init_params

FORMAT = "onerec-jax/1"
METADATA_NAME = "onerec_checkpoint.json"
PRECISIONS = ("fp16", "fp8")


def abstract_params(config: Config, rules: "quant.Rules | None" = None):
  """Shapes and dtypes of the parameter tree, FP8-quantized by `rules` when given."""
  tree = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  if rules is not None:
    tree = jax.eval_shape(lambda t: quant.quantize_params(t, rules), tree)
  return tree


def save(path: str | os.PathLike, config: Config, params: Any, *,
         rules: "quant.Rules | None" = None, source: str = "",
         overwrite: bool = False) -> pathlib.Path:
  """Writes a complete checkpoint at `path`, atomically: all files go to a sibling
  temporary folder that is renamed into place at the end, so an interrupted save never
  leaves a checkpoint that loads."""
  path = pathlib.Path(path).absolute()
  if path.exists() and not overwrite:
    raise CheckpointError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    (tmp / "config.json").write_text(config.to_json())
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / "params", params)
    checkpointer.wait_until_finished()
    meta = {"format": FORMAT, "precision": "fp8" if rules is not None else "fp16",
            "rules": None if rules is None else json.loads(rules.to_json()),
            "source": source,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    (tmp / METADATA_NAME).write_text(json.dumps(meta, indent=2))
    if path.exists():
      old = path.parent / f".{path.name}.old-{os.getpid()}"
      path.rename(old)
      tmp.rename(path)
      shutil.rmtree(old)
    else:
      tmp.rename(path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
  """The checkpoint's metadata; an incomplete or foreign folder raises CheckpointError."""
  path = pathlib.Path(path)
  meta_file = path / METADATA_NAME
  if not meta_file.exists():
    raise CheckpointError(f"{path} is not a complete onerec-jax checkpoint "
                          f"({METADATA_NAME} missing)")
  meta = json.loads(meta_file.read_text())
  if meta.get("format") != FORMAT:
    raise CheckpointError(f"{meta_file}: format {meta.get('format')!r}, expected {FORMAT!r}")
  if meta.get("precision") not in PRECISIONS:
    raise CheckpointError(f"{meta_file}: precision {meta.get('precision')!r} not in "
                          f"{PRECISIONS}")
  return meta


def load_rules(path: str | os.PathLike) -> "quant.Rules | None":
  """The FP8 rules the checkpoint was quantized with, or None for an FP16 checkpoint."""
  meta = read_metadata(path)
  return None if meta["rules"] is None else quant.Rules.from_json(json.dumps(meta["rules"]))


def load(path: str | os.PathLike) -> tuple[Config, Any]:
  """Returns (config, params) restored with the dtypes the checkpoint was written with
  (FP8 values and FP32 scales for a quantized checkpoint)."""
  path = pathlib.Path(path).absolute()
  rules = load_rules(path)
  try:
    config = Config.from_json((path / "config.json").read_text())
  except (OSError, ConfigError, ValueError) as e:
    raise CheckpointError(f"{path / 'config.json'}: {e}") from e
  target = abstract_params(config, rules)
  params = ocp.StandardCheckpointer().restore(path / "params", target)
  return config, params
