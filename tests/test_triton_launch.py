"""Triton launches carry lean configs: lean_config against the protobuf library's own
encoding of jaxlib's messages, the lowering wrapper on a stand-in lowering, and on the
GPU a real launch's config."""

import zlib

import pytest

from onerec_kernels import triton_launch

# jaxlib/gpu/triton.proto's messages, the fields lean_config reads or must keep.
_PROTO = {
    "TritonKernel": [("kernel_name", 1, "string"), ("num_warps", 2, "uint32"),
                     ("shared_mem_bytes", 3, "uint32"), ("ptx", 4, "string"),
                     ("ttir", 5, "string"), ("compute_capability", 6, "uint32"),
                     ("num_ctas", 10, "uint32"), ("global_scratch_size", 12, "uint32")],
    "Parameter": [("bool_", 2, "bool"), ("i32", 3, "int32"), ("i64", 5, "int64"),
                  ("f32", 7, "float"), ("f64", 8, "double")],
    "TritonKernelCall": [("kernel", 1, ".jax_triton.TritonKernel"), ("grid_0", 2, "uint32"),
                         ("grid_1", 3, "uint32"), ("grid_2", 4, "uint32"),
                         ("parameters", 5, ".jax_triton.Parameter", "repeated")],
    "Config": [("kernel_call", 1, ".jax_triton.TritonKernelCall"),
               ("description", 2, "string")],
    "TritonAutotunedKernelCall": [("name", 1, "string"),
                                  ("configs", 2, ".jax_triton.Config", "repeated")],
    "TritonAnyKernelCall": [("kernel_call", 1, ".jax_triton.TritonKernelCall"),
                            ("autotuned_kernel_call", 2,
                             ".jax_triton.TritonAutotunedKernelCall"),
                            ("metadata", 3, "bytes"), ("name", 4, "string")],
}


@pytest.fixture(scope="module")
def pb():
  """The messages as classes of the protobuf library (an encoder independent of ours)."""
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
  file = descriptor_pb2.FileDescriptorProto(name="triton_test.proto", package="jax_triton",
                                            syntax="proto3")
  kinds = descriptor_pb2.FieldDescriptorProto
  for name, fields in _PROTO.items():
    message = file.message_type.add(name=name)
    for field_name, number, kind, *label in fields:
      field = message.field.add(name=field_name, number=number, label=(
          kinds.LABEL_REPEATED if label else kinds.LABEL_OPTIONAL))
      if kind.startswith("."):
        field.type, field.type_name = kinds.TYPE_MESSAGE, kind
      else:
        field.type = getattr(kinds, f"TYPE_{kind.upper()}")
  pool = descriptor_pool.DescriptorPool()
  pool.Add(file)
  return {name: message_factory.GetMessageClass(
      pool.FindMessageTypeByName(f"jax_triton.{name}")) for name in _PROTO}


def _call(pb):
  any_call = pb["TritonAnyKernelCall"](metadata=b"\x00\x01meta", name="quantize")
  call = any_call.kernel_call
  call.kernel.kernel_name, call.kernel.num_warps = "_quantize_kernel", 4
  # a PTX longer than 2**14 bytes: its length is a 3-byte varint
  call.kernel.shared_mem_bytes, call.kernel.ptx = 4096, "// ptx\n" + "x" * 20000
  call.kernel.ttir, call.kernel.compute_capability, call.kernel.num_ctas = "ttir", 90, 1
  call.grid_0, call.grid_1, call.grid_2 = 70000, 3, 1
  for value in (dict(i32=-7), dict(f32=0.5), dict(f64=-2.25), dict(bool_=True),
                dict(i64=2**40)):
    call.parameters.add(**value)
  return any_call


def test_lean_config_drops_only_the_ttir(pb):
  original = _call(pb)
  config = triton_launch.lean_config(zlib.compress(original.SerializeToString()))
  out = pb["TritonAnyKernelCall"].FromString(zlib.decompress(config))
  assert out.kernel_call.kernel.ttir == ""
  out.kernel_call.kernel.ttir = original.kernel_call.kernel.ttir
  assert out == original  # everything else as it was, PTX, grid and parameters included


def test_lean_config_leaves_a_call_without_one_kernel(pb):
  autotuned = pb["TritonAnyKernelCall"](name="tuned")
  autotuned.autotuned_kernel_call.configs.add().kernel_call.CopyFrom(_call(pb).kernel_call)
  no_kernel = pb["TritonAnyKernelCall"](name="empty")
  no_kernel.kernel_call.grid_0 = 1
  for message in (autotuned, no_kernel):
    config = zlib.compress(message.SerializeToString())
    assert triton_launch.lean_config(config) == config


def test_lean_config_merges_a_field_given_twice(pb):
  """protobuf merges the occurrences of a message field (the second one's parameters are
  appended, its grid wins): a config written that way reads as jaxlib would read it."""
  original = _call(pb)
  first, second = pb["TritonKernelCall"](), pb["TritonKernelCall"]()
  first.kernel.CopyFrom(original.kernel_call.kernel)
  first.parameters.extend(original.kernel_call.parameters[:2])
  second.grid_0, second.grid_1, second.grid_2 = 70000, 3, 1
  second.parameters.extend(original.kernel_call.parameters[2:])
  rest = original.__class__(metadata=original.metadata, name=original.name)
  data = (triton_launch._field(1, first.SerializeToString()) + rest.SerializeToString()
          + triton_launch._field(1, second.SerializeToString()))
  assert pb["TritonAnyKernelCall"].FromString(data) == original  # the encoding is legal
  out = pb["TritonAnyKernelCall"].FromString(zlib.decompress(
      triton_launch.lean_config(zlib.compress(data))))
  original.kernel_call.kernel.ttir = ""
  assert out == original


def test_protobuf_reader_reads_fixed_width_fields(pb):
  f32, f64 = pb["Parameter"](f32=0.5).SerializeToString(), pb["Parameter"](
      f64=-2.25).SerializeToString()
  assert [f[:3] for f in triton_launch._fields(f32)] == [(7, 5, f32[1:])]  # 4 bytes
  assert [f[:3] for f in triton_launch._fields(f64)] == [(8, 1, f64[1:])]  # 8 bytes
  both = f32 + f64
  assert triton_launch._join(triton_launch._fields(both)) == both


@pytest.mark.parametrize("cut", [1, 3, 40])
def test_protobuf_reader_refuses_a_cut_message(pb, cut):
  data = _call(pb).SerializeToString()
  with pytest.raises(ValueError, match="runs past"):
    triton_launch.lean_config(zlib.compress(data[:-cut]))
  with pytest.raises(ValueError, match="runs past"):
    triton_launch._fields(b"\x08\x80")  # a varint whose last byte is missing


def _custom_calls(module):
  from jax.extend.mlir import ir
  calls = []

  def visit(op):
    if op.name == "stablehlo.custom_call":
      calls.append(op)
    return ir.WalkResult.ADVANCE

  module.operation.walk(visit)
  return calls


def test_lean_lowering_compiles_without_line_info_and_keeps_the_call(pb, monkeypatch):
  """A lowering that emits jax-triton's custom call (the config as bytes, an alias): it
  runs with Triton's line information off (and the knob is restored after), and its one
  call keeps its target and alias with the lean config."""
  import jax
  import jax.numpy as jnp
  from jax.extend.core import Primitive
  from jax.interpreters import mlir
  from triton import knobs
  monkeypatch.delenv("TRITON_DISABLE_LINE_INFO", raising=False)
  monkeypatch.setattr(knobs.compilation, "disable_line_info", False)
  prim = Primitive("legacy_triton_call")
  prim.multiple_results = True
  prim.def_abstract_eval(lambda a, b: [jax.core.ShapedArray(a.shape, a.dtype)])
  config = zlib.compress(_call(pb).SerializeToString())
  legacy = jax.ffi.ffi_lowering("triton_kernel_call", api_version=2, backend_config=config,
                                operand_output_aliases={1: 0})
  seen = []
  rule = lambda ctx, *a: seen.append(knobs.compilation.disable_line_info) or legacy(ctx, *a)
  mlir.register_lowering(prim, triton_launch.lean_lowering(rule), platform="cuda")
  x = jnp.ones((4, 8), jnp.float32)
  module = jax.jit(lambda a, b: prim.bind(a, b)[0]).trace(x, x).lower(
      lowering_platforms=("cuda",)).compiler_ir("stablehlo")
  assert seen == [True] and knobs.compilation.disable_line_info is False
  (call,) = _custom_calls(module)
  assert call.attributes["call_target_name"].value == "triton_kernel_call"
  out = pb["TritonAnyKernelCall"].FromString(zlib.decompress(
      call.attributes["backend_config"].value_bytes))
  assert out.kernel_call.kernel.ttir == "" and out.kernel_call.kernel.ptx.startswith("// ptx")
  (alias,) = call.attributes["output_operand_aliases"]
  assert "operand_index = 1," in str(alias)  # the one result is operand 1's buffer


@pytest.mark.gpu
def test_launch_config_has_no_line_info_or_ttir(pb):
  """A real launch (the quantize pass) lowered on the GPU: PTX without .loc directives or
  DWARF sections, and no TTIR."""
  import jax
  import jax.numpy as jnp
  from onerec_kernels.quantize import quantize_activations
  x = jnp.ones((32, 1408), jnp.bfloat16)
  module = jax.jit(lambda v: quantize_activations(v, impl="triton")).lower(x).compiler_ir(
      "stablehlo")
  (call,) = [c for c in _custom_calls(module)
             if c.attributes["call_target_name"].value == "triton_kernel_call"]
  out = pb["TritonAnyKernelCall"].FromString(zlib.decompress(
      call.attributes["backend_config"].value_bytes))
  kernel = out.kernel_call.kernel
  assert ".entry" in kernel.ptx and kernel.ttir == ""
  assert ".loc" not in kernel.ptx and ".debug_" not in kernel.ptx
