"""The converted checkpoint on disk: an Orbax tree, config.json and a metadata file that is
written last, in a folder renamed into place only when complete.

Layout of CHECKPOINT/:
  config.json              the Config
  params/                  Orbax (StandardCheckpointer) parameter tree
  onerec_checkpoint.json   format, precision, quantization rules, source; its presence
                           marks a complete checkpoint
"""

import datetime
import hashlib
import json
import os
import pathlib
import shutil
import sys
from typing import Any

import flax
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from onerec_jax import quant
from onerec_jax.cache import source_fingerprint, write_whole
from onerec_jax.checkpoint.source import CheckpointError
from onerec_jax.config import ConfigError, ModelConfig, config_from_json
from onerec_jax.model import init_params

FORMAT = "onerec-jax/1"
METADATA_NAME = "onerec_checkpoint.json"
PRECISIONS = ("fp16", "fp8")


def abstract_params(config: ModelConfig, rules: "quant.Rules | None" = None):
  """Shapes and dtypes of the parameter tree, FP8-quantized by `rules` when given.

  They come from tracing the model's init (and the quantizer), which takes a second or
  more for a large model; with jax's persistent compilation cache on, the tree is also
  kept in its folder, keyed on the config, the rules and the versions of jax, flax and
  the sources, so that a
  restarted process reads it instead (a restore of the weights waits on it)."""
  path = _tree_file(config, rules)
  if path is not None:
    try:
      return _decode(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):  # absent or unreadable: traced again
      pass
  tree = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  if rules is not None:
    tree = jax.eval_shape(lambda t: quant.quantize_params(t, rules), tree)
  if path is not None:
    write_whole(path, json.dumps(_encode(tree)).encode())  # unkept where it cannot be
  return tree


def _tree_file(config: ModelConfig, rules: "quant.Rules | None") -> pathlib.Path | None:
  """Where abstract_params keeps this tree; None while the persistent cache is off."""
  folder = jax.config.jax_compilation_cache_dir
  if not folder:
    return None
  key = hashlib.sha256(json.dumps([  # flax names the init's parameters
      config.to_json(), None if rules is None else rules.to_json(), jax.__version__,
      flax.__version__, source_fingerprint()]).encode()).hexdigest()
  return pathlib.Path(folder) / "onerec-param-trees" / f"{key}.json"


def _encode(node) -> dict:
  if isinstance(node, dict):
    return {"dict": {k: _encode(v) for k, v in node.items()}}
  if isinstance(node, quant.QArray):
    return {"qarray": [_encode(node.value), _encode(node.scale)]}
  if isinstance(node, jax.ShapeDtypeStruct):
    return {"shape": list(node.shape), "dtype": node.dtype.name}
  raise TypeError(f"no encoding for a {type(node).__name__} in the parameter tree")


def _decode(node: dict):
  if "dict" in node:
    return {k: _decode(v) for k, v in node["dict"].items()}
  if "qarray" in node:
    return quant.QArray(*map(_decode, node["qarray"]))
  return jax.ShapeDtypeStruct(tuple(node["shape"]), jnp.dtype(node["dtype"]))


def is_converted(path: str | os.PathLike) -> bool:
  """True for a folder in this layout (complete or not); False for anything else, such
  as a PyTorch-format source."""
  path = pathlib.Path(path)
  return path.is_dir() and ((path / METADATA_NAME).exists() or (path / "params").is_dir())


def _remove_stale_partials(path: pathlib.Path) -> None:
  """Removes the temporary folders that killed saves of path left behind (their process
  is gone); a save still running in another process keeps its folder."""
  for tmp in path.parent.glob(f".{path.name}.partial-*"):
    pid = tmp.name.rsplit("-", 1)[-1]
    if pid.isdigit() and not _alive(int(pid)):
      shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def check_destination(path: str | os.PathLike, overwrite: bool) -> None:
  """Refuses a destination that exists (unless overwrite) or could not be written."""
  path = pathlib.Path(path).absolute()
  empty = path.is_dir() and not any(path.iterdir())
  if path.exists() and not empty and not overwrite:
    raise CheckpointError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
  if path.exists() and not empty and not is_converted(path):
    raise CheckpointError(f"{path} exists and is not an onerec-jax checkpoint; refusing to "
                          f"replace it")
  parent = next((p for p in path.parents if p.exists()), None)
  if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
    raise CheckpointError(f"{path}: cannot create it ({parent} is not a writable folder)")


def save(path: str | os.PathLike, config: ModelConfig, params: Any, *,
         rules: "quant.Rules | None" = None, source: str = "",
         overwrite: bool = False) -> pathlib.Path:
  """Writes a complete checkpoint at `path`, atomically: all files go to a sibling
  temporary folder that is renamed into place at the end, so an interrupted save never
  leaves a checkpoint that loads."""
  path = pathlib.Path(path).absolute()
  check_destination(path, overwrite)
  path.parent.mkdir(parents=True, exist_ok=True)
  _remove_stale_partials(path)
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
    if path.exists():  # a checkpoint being replaced, or an empty folder
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
  try:
    meta = json.loads(meta_file.read_text())
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{meta_file}: unreadable ({e})") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    meta = meta if isinstance(meta, dict) else {}
    raise CheckpointError(f"{meta_file}: format {meta.get('format')!r}, expected {FORMAT!r}")
  if meta.get("precision") not in PRECISIONS:
    raise CheckpointError(f"{meta_file}: precision {meta.get('precision')!r} not in "
                          f"{PRECISIONS}")
  return meta


def load_rules(path: str | os.PathLike) -> "quant.Rules | None":
  """The FP8 rules the checkpoint was quantized with, or None for an FP16 checkpoint."""
  meta = read_metadata(path)
  if meta.get("rules") is None:
    return None
  try:
    return quant.Rules.from_json(json.dumps(meta["rules"]))
  except quant.QuantizationError as e:
    raise CheckpointError(f"{pathlib.Path(path) / METADATA_NAME}: {e}") from None


def restore(path: str | os.PathLike) -> tuple[ModelConfig, Any]:
  """Returns (config, params) of a converted checkpoint, restored with the dtypes it was
  written with (FP8 values and FP32 scales for a quantized one). Damaged files raise
  CheckpointError naming the checkpoint; nothing is returned half-restored."""
  path = pathlib.Path(path).absolute()
  rules = load_rules(path)
  try:
    config = config_from_json((path / "config.json").read_text())
  except (OSError, ConfigError) as e:
    raise CheckpointError(f"{path / 'config.json'}: {e}") from None
  target = abstract_params(config, rules)
  try:
    params = ocp.StandardCheckpointer().restore(path / "params", target)
  except Exception as e:  # orbax/tensorstore raise ValueError, OSError and their own
    _drop_late_reads()
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f"{path / 'params'}: cannot restore the parameters "
                          f"({first[:300]}); convert the checkpoint again") from None
  return config, params


def _drop_late_reads() -> None:
  """After a failed restore, tensorstore's reads still in flight complete into orbax's
  closed event loop and their callbacks raise "Event loop is closed", which Python
  would print, unasked, after the restore's own error: those alone are dropped."""
  previous = sys.unraisablehook
  if getattr(previous, "_drops_late_reads", False):
    return

  def hook(unraisable):
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
      previous(unraisable)

  hook._drops_late_reads = True
  sys.unraisablehook = hook
