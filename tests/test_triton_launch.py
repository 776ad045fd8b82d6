"""Triton launches carry their kernel's machine code: with_machine_code against the
protobuf library's own encoding of jaxlib's messages, ptxas through Triton, and on the
GPU a fresh process whose kernels run without jaxlib's ptxas."""

import hashlib
import os
import pathlib
import subprocess
import sys
import textwrap
import zlib

import pytest

from onerec_kernels import triton_launch

ROOT = pathlib.Path(__file__).resolve().parents[1]

# jaxlib/gpu/triton.proto's messages, the fields with_machine_code reads or must keep.
_PROTO = {
    "ModuleImageProto": [("object_file", 1, "bytes"), ("kernel_name", 2, "string"),
                         ("shared_mem_bytes", 3, "uint32")],
    "TritonKernel": [("kernel_name", 1, "string"), ("num_warps", 2, "uint32"),
                     ("shared_mem_bytes", 3, "uint32"), ("ptx", 4, "string"),
                     ("ttir", 5, "string"), ("compute_capability", 6, "uint32"),
                     ("num_ctas", 10, "uint32"),
                     ("module_image", 11, ".jax_triton.ModuleImageProto"),
                     ("global_scratch_size", 12, "uint32")],
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


def _call(pb, *, shared_mem=4096, ptx="// ptx\n.target sm_90a\n" + "x" * 20000):
  any_call = pb["TritonAnyKernelCall"](metadata=b"\x00\x01meta", name="quantize")
  call = any_call.kernel_call
  call.kernel.kernel_name, call.kernel.num_warps = "_quantize_kernel", 4
  call.kernel.shared_mem_bytes, call.kernel.ptx = shared_mem, ptx
  call.kernel.ttir, call.kernel.compute_capability, call.kernel.num_ctas = "ttir", 90, 1
  call.grid_0, call.grid_1, call.grid_2 = 70000, 3, 1
  for value in (dict(i32=-7), dict(f32=0.5), dict(f64=-2.25), dict(bool_=True),
                dict(i64=2**40)):
    call.parameters.add(**value)
  return any_call


@pytest.mark.parametrize("shared_mem", [0, 4096, 232448])
def test_with_machine_code_sets_the_module_image(pb, shared_mem):
  original = _call(pb, shared_mem=shared_mem)
  seen, cubin = [], b"\x7fELF" + bytes(range(256)) * 80  # longer than 2**14: 3-byte length
  config = triton_launch.with_machine_code(
      zlib.compress(original.SerializeToString()), lambda ptx: seen.append(ptx) or cubin)
  out = pb["TritonAnyKernelCall"].FromString(zlib.decompress(config))
  assert seen == [original.kernel_call.kernel.ptx]
  image = out.kernel_call.kernel.module_image
  assert (image.object_file, image.kernel_name, image.shared_mem_bytes) == (
      cubin, "_quantize_kernel", shared_mem)
  kernel = out.kernel_call.kernel
  assert kernel.ptx == "sha256:" + hashlib.sha256(original.kernel_call.kernel.ptx.encode(
      )).hexdigest() and kernel.ttir == ""
  kernel.ClearField("module_image")
  kernel.ptx, kernel.ttir = original.kernel_call.kernel.ptx, original.kernel_call.kernel.ttir
  assert out == original  # everything else as it was, grid and parameters included


def test_with_machine_code_leaves_what_it_cannot_serve(pb):
  def never(ptx):
    raise AssertionError("compiled")

  autotuned = pb["TritonAnyKernelCall"](name="tuned")
  autotuned.autotuned_kernel_call.configs.add().kernel_call.CopyFrom(_call(pb).kernel_call)
  compiled = _call(pb)
  compiled.kernel_call.kernel.module_image.object_file = b"\x7fELF"
  for message, compile_ptx in ((autotuned, never), (compiled, never),
                               (_call(pb), lambda ptx: None)):
    config = zlib.compress(message.SerializeToString())
    assert triton_launch.with_machine_code(config, compile_ptx) == config


def test_protobuf_reader_refuses_a_cut_message(pb):
  data = _call(pb).SerializeToString()
  with pytest.raises(ValueError, match="runs past"):
    triton_launch.with_machine_code(zlib.compress(data[:-3]), lambda ptx: b"")


def _custom_calls(module):
  from jax.extend.mlir import ir
  calls = []
  def visit(op):
    if op.name == "stablehlo.custom_call":
      calls.append(op)
    return ir.WalkResult.ADVANCE
  module.operation.walk(visit)
  return calls


def test_lowering_reemits_the_legacy_call_as_the_ffi_call(pb):
  """A lowering that emits jax-triton's custom call (api_version 2, the config as bytes,
  an alias) becomes one typed FFI call with the rewritten config and the same alias."""
  import jax
  import jax.numpy as jnp
  from jax.extend.core import Primitive
  from jax.interpreters import mlir
  prim = Primitive("legacy_triton_call")
  prim.multiple_results = True
  prim.def_abstract_eval(lambda a, b: [jax.core.ShapedArray(a.shape, a.dtype)])
  config = zlib.compress(_call(pb).SerializeToString())
  legacy = jax.ffi.ffi_lowering("triton_kernel_call", api_version=2, backend_config=config,
                                operand_output_aliases={1: 0})
  mlir.register_lowering(prim, triton_launch.ffi_call_with_machine_code(
      legacy, lambda ptx: b"\x7fELF cubin"), platform="cuda")
  x = jnp.ones((4, 8), jnp.float32)
  module = jax.jit(lambda a, b: prim.bind(a, b)[0]).trace(x, x).lower(
      lowering_platforms=("cuda",)).compiler_ir("stablehlo")
  (call,) = _custom_calls(module)
  assert call.attributes["call_target_name"].value == triton_launch.CUSTOM_CALL_TARGET
  # jax writes a typed FFI call's attributes as mhlo.backend_config (XLA's API version 4)
  out = pb["TritonAnyKernelCall"].FromString(zlib.decompress(
      call.attributes["mhlo.backend_config"]["opaque"].value_bytes))
  assert out.kernel_call.kernel.module_image.object_file == b"\x7fELF cubin"
  (alias,) = call.attributes["output_operand_aliases"]
  assert "operand_index = 1," in str(alias)  # the one result is operand 1's buffer


_PTX = """
.version 8.0
.target sm_90a
.address_size 64
.visible .entry add_one(.param .u64 p)
{
  .reg .b64 %rd<3>;
  .reg .f32 %f<3>;
  ld.param.u64 %rd1, [p];
  cvta.to.global.u64 %rd2, %rd1;
  ld.global.f32 %f1, [%rd2];
  add.f32 %f2, %f1, 0f3F800000;
  st.global.f32 [%rd2], %f2;
  ret;
}
"""


def test_cubin_from_tritons_ptxas():
  pytest.importorskip("triton")
  cubin = triton_launch._cubin(_PTX)
  assert cubin is not None and cubin[:4] == b"\x7fELF" and b"add_one" in cubin
  with pytest.warns(UserWarning, match="left as PTX.*names no .target"):
    assert triton_launch._cubin(_PTX.replace(".target sm_90a", "")) is None
  with pytest.warns(UserWarning, match="left as PTX.*ptxas failed"):
    assert triton_launch._cubin(_PTX.replace("add.f32", "add.nosuch")) is None


_FRESH_PROCESS = textwrap.dedent("""
    import sys, zlib
    import jax, jax.numpy as jnp, numpy as np, triton, triton.language as tl
    from jax.extend.mlir import ir
    from onerec_kernels import triton_launch

    @triton.jit
    def add_one(x_ptr, n, y_ptr, BLOCK: tl.constexpr):
      i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
      tl.store(y_ptr + i, tl.load(x_ptr + i, mask=i < n) + 1, mask=i < n)

    x = jnp.arange(1000, dtype=jnp.float32)
    out = jax.ShapeDtypeStruct(x.shape, x.dtype)
    if sys.argv[1] == "ours":
      launch = lambda v: triton_launch.triton_call(add_one, v, 1000, out=out, grid=(8,),
                                                   BLOCK=128)
      configs = []
      def visit(op):
        if op.name == "stablehlo.custom_call":
          configs.append(op.attributes["mhlo.backend_config"]["opaque"].value_bytes)
        return ir.WalkResult.ADVANCE
      jax.jit(launch).lower(x).compiler_ir("stablehlo").operation.walk(visit)
      (config,) = configs
      kernel = triton_launch._payload(triton_launch._fields(triton_launch._payload(
          triton_launch._fields(zlib.decompress(config)), 1)), 1)
      image = triton_launch._payload(triton_launch._fields(kernel), 11)
      assert triton_launch._payload(triton_launch._fields(image), 1)[:4] == b"\\x7fELF"
      y = launch(x)
    else:
      import jax_triton as jt
      y = jt.triton_call(x, 1000, kernel=add_one, out_shape=out, grid=(8,), BLOCK=128)
    np.testing.assert_array_equal(np.asarray(y), np.arange(1000) + 1)
    """)


@pytest.mark.gpu
def test_fresh_process_runs_kernels_without_jaxlibs_ptxas(tmp_path):
  """The lowered launch holds the kernel's cubin, and under a ptxas flag that makes
  jaxlib's compile fail, jax-triton's own launch fails and ours runs: jaxlib loaded the
  cubin and compiled nothing."""
  script = tmp_path / "launch.py"
  script.write_text(_FRESH_PROCESS)
  env = {**os.environ, "JAX_TRITON_PTXAS_EXTRA_FLAGS": "--no-such-option"}
  run = lambda how: subprocess.run([sys.executable, str(script), how], env=env, cwd=ROOT,
                                   capture_output=True, text=True)
  plain, ours = run("jax_triton"), run("ours")
  assert plain.returncode != 0, "jaxlib ran no ptxas: this test cannot tell"
  assert ours.returncode == 0, ours.stderr[-3000:]
