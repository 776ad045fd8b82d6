"""Apply-time quantization: flax method interceptors keyed on module paths.

`fp8(rules)` replaces the __call__ of every module whose path a quantizing rule matches and
whose "weight" is a QArray by its scheme's op (FP8, or a format below it); `capture(rules)` records the inputs and
outputs of the same modules. Both are generic: they read the module's weight with
get_variable and never run the wrapped method (whose self.param would reject a QArray),
so they need no knowledge of the model's classes.
"""

import contextlib
from typing import Any, Callable, Iterator

import flax.linen as nn
import flax.struct
import jax

from onerec_jax.quant.params import WEIGHT
from onerec_jax.quant.rules import Rules
from onerec_jax.quant.schemes import NONE, SCHEMES, QArray, Scheme, quantized_matmul


@flax.struct.dataclass
class Captured:
  """One call of a matched module: its positional and keyword arguments (the `producer`
  the FP8 op quantizes instead of x among them) and its output."""

  scheme: str = flax.struct.field(pytree_node=False)
  args: tuple[jax.Array, ...]
  kwargs: dict[str, Any]
  output: jax.Array


# (module, path, scheme, next_fun, args, kwargs) -> output
_OnMatch = Callable[[nn.Module, str, Scheme, Callable, tuple, dict], Any]


@contextlib.contextmanager
def _intercept(rules: Rules, on_match: _OnMatch) -> Iterator[None]:
  """Calls on_match for __call__ of modules a quantizing rule matches, once they have a
  weight (during init they have none yet and run unchanged)."""

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    module = context.module
    path = "/".join(module.path)
    scheme = rules.scheme(path)
    if scheme == NONE or not module.has_variable("params", WEIGHT):
      return next_fun(*args, **kwargs)
    return on_match(module, path, SCHEMES[scheme], next_fun, args, kwargs)

  with nn.intercept_methods(interceptor):
    yield


def _fp8_call(module: nn.Module, path: str, scheme: Scheme, args: tuple,
              kwargs: dict) -> tuple[str, jax.Array]:
  """The module's __call__ as its scheme's op, in the module's compute dtype: (the op's
  name, its output)."""
  w = module.get_variable("params", WEIGHT)
  if not isinstance(w, QArray):
    raise TypeError(f"fp8: {path} is quantized {scheme.name!r} by the rules but its weight "
                    f"is a plain {w.dtype} array; quantize the params with "
                    f"quantize_params(params, rules) first")
  if getattr(module, "features", None) != w.shape[-2]:
    raise TypeError(f"fp8: {path} ({type(module).__name__}) is not a matmul module whose "
                    f"features match its {w.shape} weight; rules may only quantize Linear "
                    f"and GroupedLinear modules")
  x, *rest = args
  dtype = getattr(module, "dtype", x.dtype)
  rows = kwargs.pop("rows", None)
  if rows is not None:  # Linear's output features lo:hi: the rows of value and scale
    if w.scale.shape[:1] != w.value.shape[:1]:
      raise TypeError(f"fp8: {path} computes output rows {rows} of a weight whose scale "
                      f"{w.scale.shape} is not one per row; quantize it per channel")
    w = QArray(w.value[rows[0]:rows[1]], w.scale[rows[0]:rows[1]])
  op_name, _ = scheme.ops[len(w.shape)]
  return op_name, quantized_matmul(scheme.name, x, w, *rest, out_dtype=dtype, **kwargs)


@contextlib.contextmanager
def fp8(rules: Rules) -> Iterator[dict[str, str]]:
  """Runs the modules the rules quantize through their schemes' ops (FP8 or below), the
  rest unchanged.

  `with fp8(rules) as ops: model.apply({"params": quantize_params(params, rules)}, ...)`;
  ops maps each module path that ran an FP8 op to the op's name (filled at trace time, so
  also under jit).
  """
  ops: dict[str, str] = {}

  def on_match(module, path, scheme, next_fun, args, kwargs):
    del next_fun  # never run: its self.param would reject the QArray
    ops[path], y = _fp8_call(module, path, scheme, args, kwargs)
    return y

  with _intercept(rules, on_match):
    yield ops


@contextlib.contextmanager
def capture(rules: Rules) -> Iterator[dict[str, list[Captured]]]:
  """Records the arguments (keyword arguments included) and output of every call of a
  module the rules quantize.

  Yields path -> [Captured, one per call]; a pytree, so a jitted function can return it.
  """
  calls: dict[str, list[Captured]] = {}

  def on_match(module, path, scheme, next_fun, args, kwargs):
    del module
    y = next_fun(*args, **kwargs)
    calls.setdefault(path, []).append(Captured(scheme.name, tuple(args), dict(kwargs), y))
    return y

  with _intercept(rules, on_match):
    yield calls
