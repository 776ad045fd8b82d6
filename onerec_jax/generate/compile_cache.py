"""Compiling the beam search once: jax's persistent compilation cache, the programs
exported into it (so that a restarted process neither traces nor lowers the search),
and counters of jax's compile events (so a caller can tell a compile from a cache hit,
and a soak test can check that nothing compiles after warm-up).

The cache folder: $ONEREC_JAX_COMPILE_CACHE if set ("off" disables it), else
<user cache folder>/jax-compile (onerec_jax.cache). A second process with the same model,
bucket, rules and kernel mode then loads the executables instead of compiling them.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
import pathlib
import threading
import warnings
from typing import Any, Callable

import jax

from onerec_jax.cache import cache_dir, source_fingerprint, write_whole

ENV = "ONEREC_JAX_COMPILE_CACHE"
OFF = "off"
_HIT = "/jax/compilation_cache/cache_hits"
_MISS = "/jax/compilation_cache/cache_misses"
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"

_counts: collections.Counter = collections.Counter()
_lock = threading.Lock()
_listening = False


def default_dir() -> pathlib.Path | None:
  """The folder the cache uses unless told otherwise; None when $ONEREC_JAX_COMPILE_CACHE
  is "off"."""
  value = os.environ.get(ENV)
  if value == OFF:
    return None
  return pathlib.Path(value).expanduser() if value else cache_dir() / "jax-compile"


def enable(path: str | os.PathLike | None = None) -> pathlib.Path | None:
  """Turns on jax's persistent compilation cache in path (default: default_dir()), with
  every compile cached however short; returns the folder, or None when it is off.
  Process-wide (a jax setting); call before the first compile."""
  folder = pathlib.Path(path).expanduser() if path is not None else default_dir()
  if folder is None:
    return None
  folder.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return folder


def _on_event(event: str, **_) -> None:
  if event in (_HIT, _MISS):
    with _lock:
      _counts[event] += 1


def _on_duration(event: str, duration: float, **_) -> None:
  if event == _BACKEND_COMPILE:
    with _lock:
      _counts[event] += 1
      _counts["compile_seconds"] += duration


def compile_events() -> dict[str, float]:
  """Counts since this process started listening (the first call): persistent cache
  "hits" and "misses", and "compiles", the executables jax asked XLA for (a persistent
  cache hit included: it stands in for a compile), with their "compile_seconds"."""
  global _listening
  with _lock:
    if not _listening:
      jax.monitoring.register_event_listener(_on_event)
      jax.monitoring.register_event_duration_secs_listener(_on_duration)
      _listening = True
    return {"hits": _counts[_HIT], "misses": _counts[_MISS],
            "compiles": _counts[_BACKEND_COMPILE],
            "compile_seconds": _counts["compile_seconds"]}


# Compiled programs ----------------------------------------------------------------------
EXPORT_FORMAT = 2  # bump when the key or the stored layout changes
_programs: dict[tuple, Callable] = {}
_programs_lock = threading.Lock()


def _exported_dir() -> pathlib.Path | None:
  folder = jax.config.jax_compilation_cache_dir
  return None if not folder else pathlib.Path(folder) / "onerec-exported"


def program(fn: Callable, args: Any, statics: dict[str, Any],
            out_sharding: Any = None) -> tuple[Callable, str]:
  """fn(*args) compiled, for these arguments' shapes and the statics that name fn and
  what it closes over (its config, rules, mesh, ...: anything that changes the program;
  two fns with equal statics must compute the same), as (run, how): run takes
  args as fn does; how is "process" (compiled earlier in this process), "exported" (read
  from the persistent cache folder: neither traced nor lowered, and XLA's compile of it is
  a persistent cache hit once filled) or "traced" (traced, lowered and compiled; with the
  persistent cache on, exported there for the next process).

  fn must be pure and return a tuple of arrays. args: arrays, or jax.ShapeDtypeStructs
  of them. out_sharding: None for a program on one device, else the outputs' sharding of
  a program over a mesh, whose every argument leaf then carries its sharding (the
  program's input shardings; sharding.layout makes them) and run takes arguments placed
  there. Programs are stored only while the persistent compilation cache is on
  (enable()), keyed on the statics, the argument shapes, structure and shardings, the
  jax version, the device kind and count and the source fingerprint.
  """
  leaves, treedef = jax.tree.flatten(args)
  avals = tuple((tuple(x.shape), str(x.dtype)) for x in leaves)
  shardings = (None if out_sharding is None
               else (tuple(x.sharding for x in leaves), out_sharding))
  statics_text = json.dumps(statics, sort_keys=True, default=str)
  local = (statics_text, str(treedef), avals, shardings)  # shardings: these devices
  with _programs_lock:
    if local in _programs:
      return _programs[local], "process"
  flat = lambda *xs: fn(*jax.tree.unflatten(treedef, xs))
  jit = (jax.jit if shardings is None else functools.partial(
      jax.jit, in_shardings=shardings[0], out_shardings=shardings[1]))
  folder = _exported_dir()
  how = "traced"
  if folder is None:
    compiled = jit(flat).lower(*leaves).compile()
  else:
    device = jax.devices()[0]
    key = hashlib.sha256(json.dumps({
        "format": EXPORT_FORMAT, "jax": jax.__version__, "device": device.device_kind,
        "platform": device.platform, "source": source_fingerprint(), "statics": statics_text,
        "tree": str(treedef), "avals": avals,
        "devices": 1 if shardings is None else len(shardings[1].device_set),
        "shardings": None if shardings is None else [str(s.spec) for s in shardings[0]],
    }).encode()).hexdigest()
    path = folder / f"{key}.jaxexport"
    if path.exists():
      exported = jax.export.deserialize(bytearray(path.read_bytes()))
      how = "exported"
    else:
      in_shardings = (None,) * len(leaves) if shardings is None else shardings[0]
      exported = _export(jit(flat), [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                                     for x, s in zip(leaves, in_shardings)], path)
    compiled = (jit(flat) if exported is None else jit(exported.call)).lower(
        *leaves).compile()
  run = lambda *a: compiled(*jax.tree.leaves(a))
  with _programs_lock:
    _programs.setdefault(local, run)
    return _programs[local], how


def _export(jitted: Callable, structs: list, path: pathlib.Path):
  """The jitted program exported for these argument shapes (jax.ShapeDtypeStructs, with
  the shardings of a program over a mesh) and stored at path (written whole or not at
  all); None, with a warning, where jax cannot export it (the search then runs traced)."""
  try:
    exported = jax.export.export(jitted, disabled_checks=[
        jax.export.DisabledSafetyCheck.custom_call(name) for name in _UNLISTED_CALLS])(
            *structs)
    data = exported.serialize()
  except Exception as e:  # a lowering jax.export refuses; serving goes on without it
    warnings.warn(f"the compiled search cannot be stored for the next process ({e}); "
                  f"a restart will trace it again", stacklevel=3)
    return None
  if not write_whole(path, data):
    warnings.warn(f"the compiled search cannot be stored in {path.parent} (not writable); "
                  f"a restart will trace it again", stacklevel=3)
  return exported


# Custom calls jax.export does not list as stable but that carry their whole kernel in
# the call (jax-triton embeds the compiled Triton kernel); Pallas Mosaic GPU's is listed.
_UNLISTED_CALLS = ("triton_kernel_call",)
