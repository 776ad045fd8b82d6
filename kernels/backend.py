"""How every kernel entry point picks its implementation.

Each op keeps one implementations table (`Implementations`): name -> function, in the
order of fallback. A call with impl=None tries them in that order, and the first that does
not raise `Unsupported` (wrong platform, missing package, a shape or dtype outside its
range) runs; the plain-JAX reference comes last and runs anywhere. A named impl runs alone
and its `Unsupported` error reaches the caller. An implementation that runs an input
but was not measured faster there (short top-k rows) says so in `prefer`: the default order
passes over it for that input. The kernel mode narrows the default order: "auto" (every
implementation) or "reference" (the references only, for baselines and debugging),
optionally followed by pins of single ops, "auto,attention=reference" (that op's default
is then that implementation alone; benchmarks measure one fusion at a time this way). The
mode is ONEREC_KERNELS, or the innermost `use(mode)` block; it is read when a function is
traced, so callers that jit must key their cache on `mode()` (as onerec_jax.generate
does).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Mapping

import jax

ENV = "ONEREC_KERNELS"
MODES = ("auto", "reference")
REFERENCE = "reference"

_mode_override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "onerec_kernels_mode", default=None)
_interpreting: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "onerec_kernels_interpret", default=False)


class Unsupported(NotImplementedError):
  """An implementation that cannot run these inputs here; the message says why."""


def _check_mode(value: str, where: str) -> str:
  default, *pins = value.split(",")
  if default not in MODES or not all(p.count("=") == 1 and all(p.split("=")) for p in pins):
    raise ValueError(f"{where}={value!r}: must be one of {MODES}, optionally followed by "
                     f"',op=impl' pins")
  return value


def _pins() -> dict[str, str]:
  """The ops the mode pins to one implementation: {op: impl}."""
  return dict(p.split("=") for p in mode().split(",")[1:])


def mode() -> str:
  """The kernel mode in force: the innermost use(...) block, else $ONEREC_KERNELS, else
  "auto"."""
  override = _mode_override.get()
  if override is not None:
    return override
  return _check_mode(os.environ.get(ENV, "auto"), ENV)


@contextlib.contextmanager
def use(value: str) -> Iterator[None]:
  """Runs the block (and whatever it traces) in kernel mode `value`."""
  token = _mode_override.set(_check_mode(value, "kernel mode"))
  try:
    yield
  finally:
    _mode_override.reset(token)


@contextlib.contextmanager
def interpret() -> Iterator[None]:
  """Runs the Pallas Mosaic GPU kernels traced in the block in Mosaic GPU's interpret
  mode, on any backend (the CPU tests of the kernels): there they count as supported."""
  from jax.experimental.pallas import mosaic_gpu as plgpu
  token = _interpreting.set(True)
  try:
    with plgpu.force_gpu_interpret_mode():
      yield
  finally:
    _interpreting.reset(token)


def reference_only() -> bool:
  """True in the "reference" mode (pins aside)."""
  return mode().split(",")[0] == REFERENCE


def on_hopper() -> bool:
  """True when the default device is an sm_90 GPU, where the Pallas Mosaic GPU kernels
  run natively."""
  dev = jax.devices()[0]
  return dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")).startswith("9")


def num_sms() -> int:
  """Streaming multiprocessors of the default device (132 on an H100 SXM; 132 where the
  device does not say, as on the CPU), for tilings that size their grids to the SMs."""
  try:
    return jax.devices()[0].core_count
  except AttributeError:
    return 132


@functools.cache
def triton_available() -> bool:
  """True where triton and jax_triton both import (the optional `triton` extra)."""
  try:
    import jax_triton  # noqa: F401
    import triton  # noqa: F401
  except ImportError:
    return False
  return True


def _not_hopper(what: str) -> str:
  return (f"{what} runs on Hopper (sm_90) GPUs only; the default device is "
          f"{jax.devices()[0].device_kind}")


def hopper_kernels() -> bool:
  """True where the Pallas Mosaic GPU kernels run: on a Hopper GPU, or in a block in
  interpret mode (interpret())."""
  return on_hopper() or _interpreting.get()


def require_hopper(what: str) -> None:
  """Raises Unsupported unless hopper_kernels()."""
  if not hopper_kernels():
    raise Unsupported(_not_hopper(what))


def hopper_kernel(what: str, fn: Callable) -> Callable:
  """fn as an implementation for a table: it raises Unsupported unless require_hopper(what)
  passes."""
  @functools.wraps(fn)
  def run(*args, **kwargs):
    require_hopper(what)
    return fn(*args, **kwargs)
  return run


def require_triton_gpu(what: str) -> None:
  """Raises Unsupported unless a Hopper GPU and jax_triton are both there (Triton
  kernels have no interpret mode under JAX: CPU tests run them on torch tensors)."""
  if not on_hopper():
    raise Unsupported(_not_hopper(what))
  if not triton_available():
    raise Unsupported(f"{what} needs triton and jax_triton (the `triton` extra)")


_TABLES: dict[str, "Implementations"] = {}


def tables() -> dict[str, "Implementations"]:
  """Every op's implementations table, by op name (those of the imported ops)."""
  return dict(_TABLES)


@dataclasses.dataclass(frozen=True)
class Implementations:
  """One op's implementations table: name -> function, in the default order of fallback
  (the reference last). `explicit` names run only when asked for by name (alternatives
  kept for tests and benchmarks, never picked by default); prefer[name](*args, **kwargs)
  False takes name out of the default order for those arguments."""

  op: str
  table: Mapping[str, Callable]
  explicit: tuple[str, ...] = ()
  prefer: Mapping[str, Callable[..., bool]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if list(self.table)[-1] != REFERENCE:
      raise ValueError(f"{self.op}: the reference must come last in {list(self.table)}")
    if self.op in _TABLES:
      raise ValueError(f"{self.op}: a second implementations table")
    _TABLES[self.op] = self

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self.table)

  def order(self, impl: str | None) -> tuple[str, ...]:
    """The implementations a call with this impl tries, in order."""
    pins = _pins()
    unknown = sorted(set(pins) - set(_TABLES))
    if unknown:
      raise ValueError(f"{ENV}: pins of unknown ops {unknown}; known: {sorted(_TABLES)}")
    impl = impl if impl is not None else pins.get(self.op)
    if impl is not None:
      if impl not in self.table:
        raise ValueError(f"{self.op}: impl={impl!r}; known: {list(self.table)}")
      return (impl,)
    if reference_only():
      return (REFERENCE,)
    return tuple(n for n in self.table if n not in self.explicit)

  def __call__(self, impl: str | None, *args, **kwargs):
    """Runs the first implementation of order(impl) that supports the inputs."""
    return self._first(self.order(impl), args, kwargs)

  def after(self, name: str, *args, **kwargs):
    """Runs the first implementation after name in the table's default order that
    supports the inputs (the reference last): for an implementation that decides on the
    device, at run time, to hand some inputs on."""
    names = tuple(n for n in self.table if n not in self.explicit)
    return self._first(names[names.index(name) + 1:], args, kwargs)

  def _first(self, order: tuple[str, ...], args, kwargs):
    if len(order) > 1:
      order = tuple(n for n in order[:-1] if self.prefer.get(n, lambda *a, **k: True)(
          *args, **kwargs)) + order[-1:]
    *first, last = order
    for name in first:
      try:
        return self.table[name](*args, **kwargs)
      except Unsupported:
        pass
    return self.table[last](*args, **kwargs)
