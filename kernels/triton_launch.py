"""Launching Triton kernels from JAX, shared by every Triton GPU backend.

A @triton.jit kernel is compiled by Triton's frontend to Triton IR (TTIR) when the call is
traced and handed to XLA as its own Triton custom call (`__gpu$xla.gpu.triton`, the one
Pallas' Triton backend emits). XLA compiles it with the program, launches it as one of its
own kernels and keeps its machine code in the compiled executable, so a process that
loads the executable from jax's persistent cache compiles no kernel. jax-triton's custom
call, the alternative, carries PTX that each process compiles at its first launch and
finds its kernel at every launch by hashing that serialized call: microseconds of host
time a launch that the GPU waits on where a search's kernels are short.

triton is imported when a call is traced, not with the kernel modules, so the same
@triton.jit kernels also load where only triton is installed: CPU tests run them in
Triton's interpreter (TRITON_INTERPRET=1) on torch tensors.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

# Triton's pointer element types by JAX dtype name.
_POINTER_TYPES = {
    "float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16", "float64": "*fp64",
    "float8_e4m3fn": "*fp8e4nv", "float8_e5m2": "*fp8e5", "int8": "*i8", "int16": "*i16",
    "int32": "*i32", "int64": "*i64", "uint8": "*u8", "uint16": "*u16", "uint32": "*u32",
    "uint64": "*u64", "bool": "*i1",
}
_TARGET = "__gpu$xla.gpu.triton"


def triton_call(kernel, *args, out, grid, num_warps: int = 4, num_stages: int = 3,
                zeroed=(), **meta):
  """Runs a @triton.jit kernel on JAX arrays: out is a ShapeDtypeStruct or a tuple of
  them (the outputs, passed after args as pointers), zeroed the indices of outputs
  zero-filled first, num_stages the software pipelining depth of its loops, meta the
  kernel's constexpr arguments. Every argument is a pointer (no runtime scalars).

  Each distinct launch (kernel, shapes, grid, constexprs) is jitted on its own, so a
  program that launches it from many sites traces it once; XLA compiles each distinct
  kernel once."""
  outs = out if isinstance(out, tuple) else (out,)
  grid = tuple(grid) + (1,) * (3 - len(grid))
  if math.prod(grid) == 0:  # no program runs: the outputs are never written
    result = tuple(jnp.zeros(o.shape, o.dtype) for o in outs)
  else:
    result = _launch(*args, kernel=kernel, out=outs, grid=grid, num_warps=num_warps,
                     num_stages=num_stages, zeroed=tuple(zeroed),
                     meta=tuple(sorted(meta.items())))
  return tuple(result) if isinstance(out, tuple) else result[0]


@functools.partial(jax.jit, static_argnames=("kernel", "out", "grid", "num_warps",
                                             "num_stages", "zeroed", "meta"))
def _launch(*args, kernel, out, grid, num_warps, num_stages, zeroed, meta):
  types = tuple(pointer_type(a.dtype) for a in (*args, *out))
  ttir = kernel_ttir(kernel, types, meta, num_warps, num_stages, compute_capability(),
                     zeroed_at=len(args), zeroed=tuple(types[len(args) + i] for i in zeroed))
  # A zero-filled output is a zeros operand that the kernel updates in place. XLA passes
  # the kernel its operands, then its results, so the zeros' own operand slots are extra
  # parameters that kernel_ttir inserted and the kernel ignores.
  inits = [jnp.zeros(out[i].shape, out[i].dtype) for i in zeroed]
  aliases = {len(args) + j: i for j, i in enumerate(zeroed)}
  call = jax.ffi.ffi_call(_TARGET, out, input_output_aliases=aliases)
  return call(*args, *inits, name=kernel.__name__, ir=ttir,
              num_stages=np.int32(num_stages), num_warps=np.int32(num_warps),
              grid_x=np.int32(grid[0]), grid_y=np.int32(grid[1]),
              grid_z=np.int32(grid[2]), debug=False)


def pointer_type(dtype) -> str:
  """Triton's pointer type for arrays of dtype (`*fp32`)."""
  name = jnp.dtype(dtype).name
  if name not in _POINTER_TYPES:
    raise TypeError(f"no Triton pointer type for arrays of {name}")
  return _POINTER_TYPES[name]


def compute_capability() -> int:
  """The first device's compute capability as Triton writes it (90 for Hopper)."""
  major, minor = jax.devices()[0].compute_capability.split(".")
  return int(major) * 10 + int(minor)


@functools.cache
def kernel_ttir(kernel, types: tuple[str, ...], meta: tuple, num_warps: int,
                num_stages: int, capability: int, *, zeroed_at: int = 0,
                zeroed: tuple[str, ...] = ()) -> str:
  """TTIR text of kernel specialized to pointer arguments of `types` (each 16-byte
  aligned, as XLA's buffers are) and the constexprs `meta`, after Triton's own TTIR
  passes (inlining, canonicalization); with unused pointer parameters of the types
  `zeroed` inserted before parameter `zeroed_at`."""
  import triton._C.libtriton as libtriton
  from triton.backends.compiler import GPUTarget
  from triton.backends.nvidia.compiler import CUDABackend
  from triton.compiler import code_generator, compiler

  backend = CUDABackend(GPUTarget("cuda", capability, 32))
  names = kernel.arg_names
  constants = dict(meta)
  signature = {names[i]: t for i, t in enumerate(types)}
  signature.update({c: "constexpr" for c in constants})
  attrs = {(i,): [["tt.divisibility", 16]] for i in range(len(types))}
  options = backend.parse_options({"num_warps": num_warps, "num_stages": num_stages})
  context = libtriton.ir.context()
  libtriton.ir.load_dialects(context)
  backend.load_dialects(context)
  module = code_generator.ast_to_ttir(
      kernel, compiler.ASTSource(kernel, constexprs=constants, signature=signature,
                                 attrs=attrs),
      options=options, codegen_fns=backend.get_codegen_implementation(options),
      context=context, module_map=backend.get_module_map())
  module = backend.make_ttir(module, {}, options, capability)
  text = str(module)
  return insert_parameters(text, kernel.__name__, names[zeroed_at], zeroed) if zeroed else text


def insert_parameters(ttir: str, function: str, before: str, types: tuple[str, ...]) -> str:
  """ttir with unused pointer parameters of `types` (`*i32`) inserted into the signature
  of `function` before its parameter named `before`."""
  header = re.search(rf"tt\.func public @{re.escape(function)}\(", ttir)
  at = ttir.find(f"%{before}: ", header.end()) if header else -1
  if at < 0:
    raise ValueError(f"no parameter %{before} in the TTIR of {function}")
  extra = "".join(f"%unused_{i}: !tt.ptr<{_ELEMENT_TYPES[t[1:]]}> "
                  "{tt.divisibility = 16 : i32}, " for i, t in enumerate(types))
  return ttir[:at] + extra + ttir[at:]


# TTIR element types by Triton's type names.
_ELEMENT_TYPES = {
    "fp32": "f32", "fp16": "f16", "bf16": "bf16", "fp64": "f64", "fp8e4nv": "f8E4M3FN",
    "fp8e5": "f8E5M2", "i8": "i8", "i16": "i16", "i32": "i32", "i64": "i64", "u8": "i8",
    "u16": "i16", "u32": "i32", "u64": "i64", "i1": "i1",
}


def shape(dims, dtype) -> jax.ShapeDtypeStruct:
  """The out_shape of one output."""
  return jax.ShapeDtypeStruct(dims, dtype)
