"""jax's persistent compilation cache for the beam search, and counters of jax's compile
events (so a caller can tell a compile from a cache hit, and a soak test can check that
nothing compiles after warm-up).

The cache folder: $ONEREC_JAX_COMPILE_CACHE if set ("off" disables it), else
<user cache folder>/jax-compile (onerec_jax.cache). A second process with the same model,
bucket, rules and kernel mode then loads the executables instead of compiling them.
"""

from __future__ import annotations

import collections
import os
import pathlib
import threading

import jax

from onerec_jax.cache import cache_dir

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
