"""Launching Triton kernels from JAX (jax-triton), shared by every Triton GPU backend.

jax_triton is imported on first launch, not with the kernel modules, so the same
@triton.jit kernels also load where only triton is installed: CPU tests run them in
Triton's interpreter (TRITON_INTERPRET=1) on torch tensors.

Each launch's custom call is kept lean. jax-triton's call carries its kernel in its
config (PTX and TTIR, compressed), and jaxlib copies and hashes the whole config at
every launch (GetKernelCall in jaxlib's triton_kernels.cc), so its bytes are host time
on every launch. The lowering here compiles the kernels without line information (no
.loc directives or DWARF sections in the PTX) and leaves out the TTIR, which jaxlib
keeps but never reads.
"""

import functools
import threading
import zlib

import jax


def triton_call(kernel, *args, out, grid, num_warps: int = 4, num_stages: int = 3,
                zeroed=(), **meta):
  """Runs a @triton.jit kernel on JAX arrays: out is a ShapeDtypeStruct or a tuple of
  them (the outputs, passed after args), zeroed the indices of outputs zero-filled first,
  num_stages the software pipelining depth of its loops, meta the kernel's constexpr
  arguments.

  Each distinct launch (kernel, shapes, grid, constexprs) is jitted on its own, so a
  program that launches it from many sites traces and lowers (compiles) it once."""
  return _launch(*args, kernel=kernel, out=out, grid=tuple(grid), num_warps=num_warps,
                 num_stages=num_stages, zeroed=tuple(zeroed),
                 meta=tuple(sorted(meta.items())))


@functools.partial(jax.jit, static_argnames=("kernel", "out", "grid", "num_warps",
                                             "num_stages", "zeroed", "meta"))
def _launch(*args, kernel, out, grid, num_warps, num_stages, zeroed, meta):
  import jax_triton as jt
  _lower_lean()
  return jt.triton_call(*args, kernel=kernel, out_shape=out, grid=grid,
                        num_warps=num_warps, num_stages=num_stages, zeroed_outputs=zeroed,
                        **dict(meta))


def shape(dims, dtype) -> jax.ShapeDtypeStruct:
  """The out_shape of one output."""
  return jax.ShapeDtypeStruct(dims, dtype)


@functools.cache
def _lower_lean() -> None:
  """Registers jax-triton's CUDA lowering again, wrapped by lean_lowering. Process-wide,
  once."""
  from jax.interpreters import mlir
  from jax_triton import triton_lib
  rule = functools.partial(triton_lib.triton_kernel_call_lowering,
                           triton_lib.get_cuda_backend)
  mlir.register_lowering(triton_lib.triton_kernel_call_p, lean_lowering(rule),
                         platform="cuda")
  # jax-triton keeps compiled kernels in a cache whose key leaves out Triton's knobs: one
  # compiled before this lowering (with line information) must not be reused.
  getattr(triton_lib, "_COMPILED_KERNEL_CACHE", {}).clear()


_KNOBS_LOCK = threading.Lock()  # Triton's knobs are process-wide


def lean_lowering(rule):
  """A lowering rule for rule, a lowering that emits jax-triton's custom call: rule run
  with Triton's line information off, its call's config then made lean (lean_config)."""
  from jax.extend.mlir import ir
  from triton import knobs

  def lowering(ctx, *args, **params):
    with _KNOBS_LOCK, knobs.compilation.scope():
      knobs.compilation.disable_line_info = True
      results = rule(ctx, *args, **params)
    op = results[0].owner.operation
    config = ir.StringAttr(op.attributes["backend_config"]).value_bytes
    op.attributes["backend_config"] = ir.StringAttr.get(lean_config(config))
    return results

  return lowering


# jaxlib's jax_triton protobuf messages (jaxlib/gpu/triton.proto), the fields used here.
ANY_CALL_KERNEL_CALL = 1  # TritonAnyKernelCall.kernel_call (absent when autotuned)
CALL_KERNEL = 1  # TritonKernelCall.kernel
KERNEL_TTIR = 5  # TritonKernel.ttir


def lean_config(backend_config: bytes) -> bytes:
  """jax-triton's custom call config (a zlib-compressed jax_triton.TritonAnyKernelCall)
  without the kernel's TTIR, compressed at zlib's highest level; unchanged where the call
  holds no single kernel (an autotuned call: several, chosen at run time)."""
  call = _fields(zlib.decompress(backend_config))
  kernel_call = _message(call, ANY_CALL_KERNEL_CALL)
  kernel_call_fields = [] if kernel_call is None else _fields(kernel_call)
  kernel = _message(kernel_call_fields, CALL_KERNEL)
  if kernel is None:
    return backend_config
  kernel = _join(f for f in _fields(kernel) if f[0] != KERNEL_TTIR)
  kernel_call = _join(_replace(kernel_call_fields, CALL_KERNEL, kernel))
  return zlib.compress(_join(_replace(call, ANY_CALL_KERNEL_CALL, kernel_call)), level=9)


# Protocol buffer wire format, as much as these messages need: a message is a list of
# fields (number, wire type, payload, the field's bytes as read).
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    if i >= len(data):
      raise ValueError("a protobuf varint runs past the message's end")
    byte = data[i]
    value |= (byte & 0x7F) << shift
    shift, i = shift + 7, i + 1
    if byte < 0x80:
      return value, i


def _fields(data: bytes) -> list[tuple[int, int, bytes | int, bytes]]:
  fields, i = [], 0
  while i < len(data):
    start = i
    key, i = _read_varint(data, i)
    number, wire = key >> 3, key & 7
    if wire == _VARINT:
      payload, i = _read_varint(data, i)
    elif wire == _LEN:
      size, i = _read_varint(data, i)
      payload, i = data[i:i + size], i + size
    elif wire in (_I64, _I32):
      size = 8 if wire == _I64 else 4
      payload, i = data[i:i + size], i + size
    else:
      raise ValueError(f"protobuf wire type {wire} (field {number}) is not supported")
    if i > len(data):
      raise ValueError(f"protobuf field {number} runs past the message's end")
    fields.append((number, wire, payload, data[start:i]))
  return fields


def _message(fields, number):
  """A message field's value: its occurrences joined, which is protobuf's merge of a
  message field that appears more than once; None where it is absent."""
  values = [payload for n, _, payload, _ in fields if n == number]
  return b"".join(values) if values else None


def _field(number: int, value: bytes) -> bytes:
  return _varint(number << 3 | _LEN) + _varint(len(value)) + value


def _replace(fields, number, payload: bytes):
  """The fields with field number's occurrences replaced by one, where the first was."""
  first = next(i for i, f in enumerate(fields) if f[0] == number)
  return [(n, w, p, _field(number, payload) if i == first else raw)
          for i, (n, w, p, raw) in enumerate(fields) if n != number or i == first]


def _join(fields) -> bytes:
  return b"".join(raw for *_, raw in fields)
