"""Every Triton GPU entry point lowered on the CPU (lowering needs no GPU), each Triton
custom call it emits checked the way XLA will read it: the TTIR parses in jaxlib's Triton
dialect (the one XLA compiles it with), and the kernel's parameters are the call's
operands, then its results, in number and element type, a zero-filled output's own
operand slot an unused parameter.

Run as a script (test_triton_launch.py does) in a process without TRITON_INTERPRET, which
would turn the kernels into interpreter functions; prints the kernels checked, by call,
as JSON.
"""

import json
import re

import jax
import jax.numpy as jnp
from jax._src.lib import triton as jax_triton_dialect
from jax._src.lib.mlir import ir

from onerec_kernels import triton_launch
from onerec_kernels.attention import triton_gpu as attention
from onerec_kernels.dequant_gemm import triton_gpu as dequant
from onerec_kernels.quantize import triton_gpu as quantize
from onerec_kernels.topk import radix
from onerec_kernels.topk import triton_gpu as topk

def _checked(fn, *args) -> list[str]:
  """The kernels of the Triton custom calls of fn(*args) lowered on the CPU, each call
  checked (_check)."""
  module = jax.jit(fn).lower(*args).compiler_ir("stablehlo")
  calls = []

  def walk(op):
    for region in op.regions:
      for block in region.blocks:
        for inner in block.operations:
          if (inner.operation.name == "stablehlo.custom_call" and
              ir.StringAttr(inner.attributes["call_target_name"]).value ==
              "__gpu$xla.gpu.triton"):
            calls.append(inner)
          walk(inner)
  walk(module.operation)
  return [_check(c) for c in calls]  # while the module, which owns the calls, lives


def _element(t) -> str:
  """A tensor's element type as Triton's pointers name it (unsigned types are signless)."""
  name = str(ir.RankedTensorType(t).element_type)
  return name[1:] if name.startswith("ui") else name


def _aliases(call) -> dict[int, int]:
  """The call's output-operand aliases as {operand index: result index}."""
  pairs = {}
  for alias in call.attributes["output_operand_aliases"]:
    out, operand = re.search(r"output_tuple_indices = \[(\d*)\], operand_index = (\d+)",
                             str(alias)).groups()
    pairs[int(operand)] = int(out or 0)
  return pairs


def _check(call) -> str:
  """Asserts the call's TTIR matches its operands and results; returns the kernel name."""
  config = call.attributes["mhlo.backend_config"]
  name = ir.StringAttr(config["name"]).value
  assert ir.IntegerAttr(config["grid_x"]).value >= 1
  aliased = _aliases(call)  # {operand: result}
  slots = [_element(v.type) for v in call.operands] + [_element(r.type) for r in call.results]
  context = ir.Context()
  jax_triton_dialect.dialect.register_dialect(context)
  with context:
    module = ir.Module.parse(ir.StringAttr(config["ir"]).value)
    (fn,) = [op for op in module.body.operations if op.operation.name == "tt.func"]
    assert ir.StringAttr(fn.attributes["sym_name"]).value == name
    params = fn.regions[0].blocks[0].arguments
    assert len(params) == len(slots), name
    for i, (param, slot) in enumerate(zip(params, slots)):
      assert str(param.type) == f"!tt.ptr<{slot}>", (name, i, str(param.type), slot)
      if i in aliased:  # the zeros operand's slot: the kernel writes through the result's
        assert not list(param.uses), (name, i)
        assert list(params[len(call.operands) + aliased[i]].uses), (name, i)
  return name


def quantize_calls() -> list[str]:
  x = jnp.zeros((40, 2 * 1408), jnp.bfloat16)
  w = jnp.ones((1408,), jnp.bfloat16)
  rows = jnp.arange(24, dtype=jnp.int32)
  names = []
  for args, kw in [((x[:, :1408], None, None), dict(k=1408, mode=0, per_block=False)),
                   ((x[:, :1408], w, rows), dict(k=1408, mode=1, per_block=False)),
                   ((x, None, None), dict(k=1408, mode=2, per_block=True))]:
    names += _checked(lambda a, b, c: quantize.quantize(a, b, c, eps=1e-6, **kw), *args)
  return names


def attention_calls(n: int) -> list[str]:
  """n keys: 40 (one key split) or 4000 (several, merged after)."""
  q = jnp.zeros((2, 1, 2, 8, 128), jnp.bfloat16)
  kv = jnp.zeros((2, n, 2, 128), jnp.bfloat16)
  mask = jnp.ones((2, n), bool)
  return _checked(lambda q, k, v, m: attention.attention(q, k, v, m, lse=True),
                  q, kv, kv, mask)


def top_k_calls() -> list[str]:
  """The radix select's kernels, those of the fused beam search (both with zero-filled
  counters) and the router's."""
  x = jnp.zeros((3, 50000), jnp.float32)
  cfg = radix.Config.default(50000, 40)
  names = set(_checked(lambda x: radix.top_k(x, 40, cfg, topk.TritonOps(cfg)), x))
  logits = jnp.zeros((2, 8, 1100), jnp.float32)
  cfg = radix.Config.default(8 * 1100, 16)
  names |= set(_checked(lambda l, s: topk.beam_top_k(l, s, 16, None, cfg), logits,
                        logits[..., 0]))
  names |= set(_checked(lambda l, b: topk.router_top_k(l, b, 6, "sigmoid", True, 2.5),
                        jnp.zeros((64, 64)), jnp.zeros((64,))))
  return sorted(names)


def dequant_gemm_calls() -> list[str]:
  x = jnp.zeros((40, 256), jnp.float8_e4m3fn)
  w = jnp.zeros((3, 128, 128), jnp.uint8)
  return _checked(
      lambda x, xs, w, ws, g: dequant.dequant_grouped_gemm(
          x, xs, w, ws, g, group=32, e2m1=True, out_dtype=jnp.bfloat16),
      x, jnp.ones((40,)), w, jnp.zeros((3, 128, 8), jnp.float8_e8m0fnu),
      jnp.array([10, 0, 30], jnp.int32))



def exported_calls() -> list[str]:
  """The kernels in a program with a Triton call that the search's store exported (and
  read back): jax.export lists XLA's Triton call as unstable, the store accepts it."""
  import pathlib
  import tempfile
  import warnings

  from onerec_jax.generate import compile_cache
  x = jax.ShapeDtypeStruct((32, 1408), jnp.bfloat16)
  with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
    warnings.simplefilter("error")
    path = pathlib.Path(folder) / "quantize.jaxexport"
    compile_cache._export(jax.jit(lambda x: quantize.quantize(
        x, None, None, k=1408, mode=0, eps=0.0, per_block=False)), [x], path)
    back = jax.export.deserialize(bytearray(path.read_bytes()))
  return re.findall(r'custom_call @__gpu\$xla\.gpu\.triton\(.*?name = "(\w+)"',
                    back.mlir_module())


def main():
  triton_launch.compute_capability = lambda: 90  # sm_90, as on the GPU
  print(json.dumps({"quantize": quantize_calls(), "attention_one_split": attention_calls(40),
                    "attention_splits": attention_calls(4000), "top_k": top_k_calls(),
                    "dequant_gemm": dequant_gemm_calls(), "exported": exported_calls()}))


if __name__ == "__main__":
  main()
