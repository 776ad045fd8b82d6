"""A program's kernel custom calls, read out of its StableHLO and replayed on zeros.

Two kinds of kernel carry device code that each process compiles again on first use,
whatever jax's persistent cache holds: jaxlib's Triton launch runs ptxas on its PTX at the
kernel's first launch, and jaxlib's Mosaic GPU call compiles its MLIR module when XLA
loads the executable. Both keep what they compiled in a process-wide table keyed on the
call's own attributes (the PTX; the module's hash), so a small program made of the same
calls, compiled and run once, leaves every kernel ready for the real program: that is
what replay builds, for compile_cache.preload to run while the weights load.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
from jax.extend import core
from jax.extend.mlir import ir
from jax.interpreters import mlir

# MLIR element types -> numpy dtype names (the ones a kernel's operands can have).
_DTYPES = {
    "f64": "float64", "f32": "float32", "f16": "float16", "bf16": "bfloat16",
    "f8E4M3FN": "float8_e4m3fn", "f8E5M2": "float8_e5m2", "f8E8M0FNU": "float8_e8m0fnu",
    "f4E2M1FN": "float4_e2m1fn", "i1": "bool", "i4": "int4", "i8": "int8", "i16": "int16",
    "i32": "int32", "i64": "int64", "ui4": "uint4", "ui8": "uint8", "ui16": "uint16",
    "ui32": "uint32", "ui64": "uint64",
}


def _tensor(value_type: ir.Type) -> dict[str, Any] | None:
  """{"type", "shape", "dtype"} of a ranked tensor of a known element type, else None."""
  t = value_type.maybe_downcast()
  if not isinstance(t, ir.RankedTensorType) or not t.has_static_shape:
    return None
  dtype = _DTYPES.get(str(t.element_type))
  if dtype is None or t.encoding is not None:
    return None
  return {"type": str(t), "shape": list(t.shape), "dtype": dtype}


def kernel_calls(module: ir.Module, targets: Iterable[str]) -> list[dict[str, Any]]:
  """The distinct stablehlo.custom_call ops of module whose target is in targets, as
  JSON-able dicts: "target", "operands" and "results" ({"type", "shape", "dtype"} each),
  "attributes" ([name, MLIR text] pairs, without the sdy.* ones, which name the
  program's mesh). Calls that call computations or take or give anything but ranked
  tensors are left out: they cannot be replayed alone."""
  targets = set(targets)
  found, seen = [], set()

  def visit(op):
    if op.name != "stablehlo.custom_call":
      return ir.WalkResult.ADVANCE
    attrs = op.attributes
    target = ir.StringAttr(attrs["call_target_name"]).value
    called = "called_computations" in attrs and len(ir.ArrayAttr(
        attrs["called_computations"])) > 0
    if target not in targets or called:
      return ir.WalkResult.ADVANCE
    operands = [_tensor(v.type) for v in op.operands]
    results = [_tensor(v.type) for v in op.results]
    if None in operands or None in results:
      return ir.WalkResult.ADVANCE
    named = sorted((attrs[i].name, str(attrs[i].attr)) for i in range(len(attrs)))
    call = {"target": target, "operands": operands, "results": results,
            "attributes": [[k, v] for k, v in named if not k.startswith("sdy.")]}
    key = repr(call)
    if key not in seen:
      seen.add(key)
      found.append(call)
    return ir.WalkResult.ADVANCE

  module.operation.walk(visit)
  return found


_replay_p = core.Primitive("onerec_kernel_replay")
_replay_p.multiple_results = True


@_replay_p.def_abstract_eval
def _abstract(*operands, attributes, results):
  del operands, attributes
  return [jax.core.ShapedArray(tuple(shape), jnp.dtype(dtype)) for _, shape, dtype in results]


def _lower(ctx, *operands, attributes, results):
  del ctx
  op = ir.Operation.create(
      "stablehlo.custom_call", results=[ir.Type.parse(t) for t, _, _ in results],
      operands=list(operands),
      attributes={k: ir.Attribute.parse(v) for k, v in attributes})
  return op.results


mlir.register_lowering(_replay_p, _lower)


def replay(calls: Sequence[dict[str, Any]]) -> Callable[[], list[jax.Array]]:
  """A jitted function of no arguments that makes each call (kernel_calls' dicts) once on
  zeros of its operands' shapes, with its attributes as they were, and returns the first
  element of every non-empty result (so that no call is dead code)."""
  def run():
    out = []
    for call in calls:
      zeros = [jnp.zeros(x["shape"], x["dtype"]) for x in call["operands"]]
      got = _replay_p.bind(
          *zeros, attributes=tuple((k, v) for k, v in call["attributes"]),
          results=tuple((x["type"], tuple(x["shape"]), x["dtype"]) for x in call["results"]))
      out.extend(r.reshape(-1)[:1] for r in got if r.size)
    return out
  return jax.jit(run)
