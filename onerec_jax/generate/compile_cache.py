"""Compiling the beam search once: jax's persistent compilation cache, the programs
exported into it (so that a restarted process neither traces nor lowers the search),
and counters of jax's compile events (so a caller can tell a compile from a cache hit,
and a soak test can check that nothing compiles after warm-up).

The cache folder: $ONEREC_JAX_COMPILE_CACHE if set ("off" disables it), else
<user cache folder>/jax-compile (onerec_jax.cache). A second process with the same model,
bucket, rules and kernel mode then loads the executables instead of compiling them.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import threading
import time
import warnings
from typing import Any, Callable, Sequence

import jax

from onerec_jax.cache import cache_dir, source_fingerprint, write_whole
from onerec_jax.generate import _kernel_calls

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


_PRELOAD_THREAD = "onerec-kernel-preload"


def _counted() -> bool:
  """Whether this thread's compiles count: the kernel preload's (its own thread, running
  beside the search's compile) do not, so a count is the calling program's."""
  return threading.current_thread().name != _PRELOAD_THREAD


def _on_event(event: str, **_) -> None:
  if event in (_HIT, _MISS) and _counted():
    with _lock:
      _counts[event] += 1


def _on_duration(event: str, duration: float, **_) -> None:
  if event == _BACKEND_COMPILE and _counted():
    with _lock:
      _counts[event] += 1
      _counts["compile_seconds"] += duration


def compile_events() -> dict[str, float]:
  """Counts since this process started listening (the first call): persistent cache
  "hits" and "misses", and "compiles", the executables jax asked XLA for (a persistent
  cache hit included: it stands in for a compile), with their "compile_seconds"; the
  kernel preload's are not counted."""
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
  two fns with equal statics must compute the same), as (run, how): run takes args as fn
  does; how is "process" (compiled earlier in this process, into the same cache folder or
  with the cache off both times), "exported" (read from the persistent cache folder:
  neither traced nor lowered, and XLA's compile of it is a persistent cache hit once
  filled) or "traced" (traced, lowered and compiled; with the persistent cache on,
  exported there for the next process).

  fn must be pure and return a tuple of arrays. args: arrays, or jax.ShapeDtypeStructs
  of them. out_sharding: None for a program on one device, else the outputs' sharding of
  a program over a mesh, whose every argument leaf then carries its sharding (the
  program's input shardings; sharding.layout makes them) and run takes arguments placed
  there. Programs are stored only while the persistent compilation cache is on
  (enable()), keyed on the statics, the argument shapes, structure and shardings, the
  jax version, the device kind and count and the source fingerprint.
  """
  leaves, treedef, avals, shardings, statics_text = _signature(args, statics, out_sharding)
  # shardings: these devices; the folder: a program compiled before the cache was on (or
  # into another folder) is compiled again, and stored, once it is on.
  local = (statics_text, str(treedef), avals, shardings, _exported_dir())
  with _programs_lock:
    if local in _programs:
      return _programs[local], "process"
  flat = lambda *xs: fn(*jax.tree.unflatten(treedef, xs))
  jit = (jax.jit if shardings is None else functools.partial(
      jax.jit, in_shardings=shardings[0], out_shardings=shardings[1]))
  path = _stored(statics_text, treedef, avals, shardings)
  how = "traced"
  if path is None:
    compiled = jit(flat).lower(*leaves).compile()
  else:
    if path.exists():
      exported = jax.export.deserialize(bytearray(path.read_bytes()))
      how = "exported"
    else:
      in_shardings = (None,) * len(leaves) if shardings is None else shardings[0]
      exported = _export(jit(flat), [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                                     for x, s in zip(leaves, in_shardings)], path)
    lowered = (jit(flat) if exported is None else jit(exported.call)).lower(*leaves)
    compiled = lowered.compile()
    if how == "traced" and exported is not None:
      _store_kernels(lowered, _kernels_file(path))
  run = lambda *a: compiled(*jax.tree.leaves(a))
  with _programs_lock:
    _programs.setdefault(local, run)
    return _programs[local], how


def _signature(args: Any, statics: dict[str, Any], out_sharding: Any):
  """(leaves, treedef, avals, shardings, statics_text): what names a program."""
  leaves, treedef = jax.tree.flatten(args)
  avals = tuple((tuple(x.shape), str(x.dtype)) for x in leaves)
  shardings = (None if out_sharding is None
               else (tuple(x.sharding for x in leaves), out_sharding))
  return leaves, treedef, avals, shardings, json.dumps(statics, sort_keys=True, default=str)


def _stored(statics_text: str, treedef, avals, shardings) -> pathlib.Path | None:
  """Where the program so named is stored; None while the persistent cache is off."""
  folder = _exported_dir()
  if folder is None:
    return None
  device = jax.devices()[0]
  key = hashlib.sha256(json.dumps({
      "format": EXPORT_FORMAT, "jax": jax.__version__, "device": device.device_kind,
      "platform": device.platform, "source": source_fingerprint(), "statics": statics_text,
      "tree": str(treedef), "avals": avals,
      "devices": 1 if shardings is None else len(shardings[1].device_set),
      "shardings": None if shardings is None else [str(s.spec) for s in shardings[0]],
  }).encode()).hexdigest()
  return folder / f"{key}.jaxexport"


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


# Preloaded kernels ----------------------------------------------------------------------
# Custom calls whose device code every process compiles again on first use (jax-triton's
# launches, Pallas Mosaic GPU's calls; _kernel_calls says how), whatever the cache holds.
PRELOADED_CALLS = ("triton_kernel_call", "mosaic_gpu_v2", "mosaic_gpu")
KERNELS_FORMAT = 1


def _kernels_file(program_file: pathlib.Path) -> pathlib.Path:
  return program_file.with_suffix(".kernels.json")


def _store_kernels(lowered: Any, path: pathlib.Path) -> None:
  """Stores at path the kernel calls of the lowered program, after compiling and running
  them once on zeros (which also puts their executable in the persistent cache, where jax
  uses it in this process); where that fails, a warning, and nothing is stored."""
  try:
    calls = _kernel_calls.kernel_calls(lowered.compiler_ir("stablehlo"), PRELOADED_CALLS)
    if calls:
      jax.block_until_ready(_kernel_calls.replay(calls)())
  except Exception as e:  # a call that cannot be replayed alone: the next process waits
    warnings.warn(f"the search's kernels cannot be prepared ahead of a restart ({e}); a "
                  f"restarted process compiles them at their first use", stacklevel=3)
    return
  if not write_whole(path, json.dumps({"format": KERNELS_FORMAT, "calls": calls}).encode()):
    warnings.warn(f"the search's kernels cannot be stored in {path.parent} (not "
                  f"writable); a restarted process compiles them at their first use",
                  stacklevel=3)


@dataclasses.dataclass
class Preload:
  """Stored programs' kernels being compiled and run once on a background thread."""
  kernels: int  # distinct kernel calls
  seconds: float | None = None  # how long it took, once done
  error: str | None = None  # why it stopped, where it failed
  _thread: threading.Thread | None = dataclasses.field(default=None, repr=False)

  def wait(self) -> "Preload":
    """Returns once the kernels are ready (or failed)."""
    if self._thread is not None:
      self._thread.join()
    return self


def preload(programs: Sequence[tuple[Any, dict[str, Any], Any]]) -> Preload | None:
  """Starts compiling and running once, on a daemon thread, the kernels of the stored
  programs that program(fn, args, statics, out_sharding) would read, for each (args,
  statics, out_sharding) in programs (args may be jax.ShapeDtypeStructs: the weights
  need not be loaded yet), so that this process's first run of them finds the kernels
  compiled; the weights can load meanwhile. None when none of them is stored. A kernel
  that fails here is left to the program itself, with a warning."""
  calls, found = [], False
  for args, statics, out_sharding in programs:
    _, treedef, avals, shardings, statics_text = _signature(args, statics, out_sharding)
    path = _stored(statics_text, treedef, avals, shardings)
    try:
      stored = json.loads(_kernels_file(path).read_bytes()) if path else None
    except (OSError, ValueError):  # absent or unreadable: nothing to preload
      stored = None
    if (isinstance(stored, dict) and stored.get("format") == KERNELS_FORMAT
        and isinstance(stored.get("calls"), list)):
      found = True
      calls += [c for c in stored["calls"] if c not in calls]
  if not found:
    return None
  result = Preload(kernels=len(calls))
  if not calls:
    result.seconds = 0.0
    return result

  def work():
    t0 = time.perf_counter()
    try:
      jax.block_until_ready(_kernel_calls.replay(calls)())
    except Exception as e:  # the program compiles its kernels itself, as without this
      result.error = f"{type(e).__name__}: {str(e).strip()[:300]}"
      warnings.warn(f"preloading the search's kernels failed ({result.error}); they "
                    f"compile at their first use", stacklevel=1)
    result.seconds = time.perf_counter() - t0

  result._thread = threading.Thread(target=work, name=_PRELOAD_THREAD, daemon=True)
  # A process that exits early (a bad checkpoint) waits for it before jax's own exit
  # handler clears the backends under it (atexit runs the last registered first).
  atexit.register(result.wait)
  result._thread.start()
  return result
