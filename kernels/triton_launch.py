"""Launching Triton kernels from JAX (jax-triton), shared by every Triton GPU backend.

jax_triton is imported on first launch, not with the kernel modules, so the same
@triton.jit kernels also load where only triton is installed: CPU tests run them in
Triton's interpreter (TRITON_INTERPRET=1) on torch tensors.

Each launch is lowered to jaxlib's typed FFI Triton call (CUSTOM_CALL_TARGET) and
carries its kernel's machine code. jax-triton emits the older custom call, whose config
jaxlib copies and hashes in full at every launch (GetKernelCall in jaxlib's
triton_kernels.cc) and which holds the kernel's PTX, which jaxlib compiles with ptxas at
the kernel's first launch in every process (50-190 ms a kernel on an H200), a step that
no persistent cache keeps. The FFI call reads its config once, when XLA loads the
program, and launches from the kernel it kept; the config here holds the cubin that
ptxas makes from the PTX (jaxlib's TritonKernel.module_image field), so the compiled
program, and with it the persistent compilation cache and a stored program, carry it and
jaxlib compiles nothing.
"""

import functools
import hashlib
import re
import subprocess
import tempfile
import warnings
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
  _lower_with_machine_code()
  return jt.triton_call(*args, kernel=kernel, out_shape=out, grid=grid,
                        num_warps=num_warps, num_stages=num_stages, zeroed_outputs=zeroed,
                        **dict(meta))


def shape(dims, dtype) -> jax.ShapeDtypeStruct:
  """The out_shape of one output."""
  return jax.ShapeDtypeStruct(dims, dtype)


CUSTOM_CALL_TARGET = "triton_kernel_call_ffi"  # jaxlib's typed FFI Triton launch


@functools.cache
def _lower_with_machine_code() -> None:
  """Registers jax-triton's CUDA lowering again, re-emitted by ffi_call_with_machine_code.
  Process-wide, once."""
  from jax.interpreters import mlir
  from jax_triton import triton_lib
  rule = functools.partial(triton_lib.triton_kernel_call_lowering,
                           triton_lib.get_cuda_backend)
  mlir.register_lowering(triton_lib.triton_kernel_call_p,
                         ffi_call_with_machine_code(rule, _cubin), platform="cuda")


def ffi_call_with_machine_code(rule, compile_ptx):
  """A lowering rule for rule, a lowering that emits jax-triton's custom call: the same
  operands, results and aliases as one CUSTOM_CALL_TARGET call, whose config is
  with_machine_code(the legacy call's config, compile_ptx)."""
  from jax.extend.mlir import ir

  def lowering(ctx, *args, **params):
    legacy = rule(ctx, *args, **params)[0].owner.operation
    config = ir.StringAttr(legacy.attributes["backend_config"]).value_bytes
    opaque = ir.StringAttr.get(with_machine_code(config, compile_ptx))
    results = jax.ffi.ffi_lowering(CUSTOM_CALL_TARGET, backend_config={"opaque": opaque})(
        ctx, *args)
    if "output_operand_aliases" in legacy.attributes:
      results[0].owner.operation.attributes["output_operand_aliases"] = (
          legacy.attributes["output_operand_aliases"])
    legacy.erase()
    return results

  return lowering


# jaxlib's jax_triton protobuf messages (jaxlib/gpu/triton.proto), the fields used here.
ANY_CALL_KERNEL_CALL = 1  # TritonAnyKernelCall.kernel_call (absent when autotuned)
CALL_KERNEL = 1  # TritonKernelCall.kernel
KERNEL_NAME, KERNEL_SHARED_MEM, KERNEL_PTX, KERNEL_TTIR = 1, 3, 4, 5  # TritonKernel
KERNEL_MODULE_IMAGE = 11  # TritonKernel.module_image: ModuleImageProto
IMAGE_OBJECT_FILE, IMAGE_KERNEL_NAME, IMAGE_SHARED_MEM = 1, 2, 3  # ModuleImageProto


def with_machine_code(backend_config: bytes, compile_ptx) -> bytes:
  """jax-triton's custom call config (a zlib-compressed jax_triton.TritonAnyKernelCall)
  with the kernel's module_image set to compile_ptx(ptx), its cubin, the PTX replaced by
  its digest (with the cubin there, jaxlib uses the PTX only as its module cache's key)
  and the TTIR left out; the config unchanged where compile_ptx returns None, the call is
  autotuned (several kernels, chosen at run time) or the kernel has machine code."""
  call = _fields(zlib.decompress(backend_config))
  kernel_call = _payload(call, ANY_CALL_KERNEL_CALL)
  if kernel_call is None:
    return backend_config
  kernel_call_fields = _fields(kernel_call)
  kernel_fields = _fields(_payload(kernel_call_fields, CALL_KERNEL) or b"")
  ptx = _payload(kernel_fields, KERNEL_PTX)
  if ptx is None or _payload(kernel_fields, KERNEL_MODULE_IMAGE) is not None:
    return backend_config
  cubin = compile_ptx(ptx.decode())
  if cubin is None:
    return backend_config
  image = (_field(IMAGE_OBJECT_FILE, cubin)
           + _field(IMAGE_KERNEL_NAME, _payload(kernel_fields, KERNEL_NAME) or b"")
           + _field(IMAGE_SHARED_MEM, _payload(kernel_fields, KERNEL_SHARED_MEM) or 0))
  digest = b"sha256:" + hashlib.sha256(ptx).hexdigest().encode()
  kernel = (_join(f for f in kernel_fields if f[0] not in (KERNEL_PTX, KERNEL_TTIR))
            + _field(KERNEL_PTX, digest) + _field(KERNEL_MODULE_IMAGE, image))
  kernel_call = _join(_replace(kernel_call_fields, CALL_KERNEL, kernel))
  return zlib.compress(_join(_replace(call, ANY_CALL_KERNEL_CALL, kernel_call)), level=9)


@functools.lru_cache(maxsize=None)
def _cubin(ptx: str) -> bytes | None:
  """ptx compiled for the target it names by Triton's ptxas; None, with a warning,
  where that fails (jaxlib then compiles the PTX at the first launch, as without it)."""
  target = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.MULTILINE)
  try:
    from triton import knobs
    ptxas = knobs.nvidia.ptxas.path
    if target is None:
      raise ValueError("the PTX names no .target")
    with tempfile.TemporaryDirectory() as folder:
      src, binary = f"{folder}/kernel.ptx", f"{folder}/kernel.cubin"
      with open(src, "w") as f:
        f.write(ptx)
      subprocess.run([ptxas, f"--gpu-name={target.group(1)}", src, "-o", binary],
                     check=True, capture_output=True)
      with open(binary, "rb") as f:
        return f.read()
  except Exception as e:  # ptxas missing or failing: the launch still works, slower
    detail = (e.stderr.decode(errors="replace").strip()
              if isinstance(e, subprocess.CalledProcessError) else str(e))
    warnings.warn(f"Triton kernel left as PTX (jaxlib compiles it at its first launch): "
                  f"ptxas failed: {detail}", stacklevel=2)
    return None


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


def _payload(fields, number):
  """The last value of a field (protobuf's rule for a repeated singular field)."""
  values = [payload for n, _, payload, _ in fields if n == number]
  return values[-1] if values else None


def _field(number: int, value: bytes | int) -> bytes:
  if isinstance(value, int):
    return _varint(number << 3 | _VARINT) + _varint(value)
  return _varint(number << 3 | _LEN) + _varint(len(value)) + value


def _replace(fields, number, payload: bytes):
  return [(n, w, p, _field(number, payload) if n == number else raw)
          for n, w, p, raw in fields]


def _join(fields) -> bytes:
  return b"".join(raw for *_, raw in fields)
