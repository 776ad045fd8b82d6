"""quantize_activations: the FP8 quantization of a matmul's input activation, fused with
the RMSNorm or SwiGLU that produced it and with the gather of MoE rows; the Triton kernel
on a Hopper GPU, the reference elsewhere.

Fusing the producer saves a pass: its input is read once, and the 16-bit activation is
neither written nor read again (every quantized Linear's input is an RMSNorm or a SwiGLU
output).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from onerec_kernels import triton_launch
from onerec_kernels.backend import on_hopper, reference_only
from onerec_kernels.quantize.reference import quantize_blocks, quantize_rows


@functools.partial(jax.tree_util.register_dataclass, data_fields=["x", "weight"],
                   meta_fields=["eps"])
@dataclasses.dataclass(frozen=True)
class RMSNormOf:
  """The activation rmsnorm(x) * weight: x [..., K], weight [K]; a pytree whose eps is
  static."""

  x: jax.Array
  weight: jax.Array
  eps: float = 1e-6


@functools.partial(jax.tree_util.register_dataclass, data_fields=["gate_up"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class SwiGLUOf:
  """The activation silu(gate) * up of a fused gate_up [..., 2F] laid out [gate; up]."""

  gate_up: jax.Array


@functools.partial(jax.tree_util.register_dataclass, data_fields=["src", "rows"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class RowsOf:
  """Rows rows [R] (int) of the 2-D activation [M, K] that src is or computes: the MoE
  permutation, gathered inside the quantization pass."""

  src: "jax.Array | RMSNormOf | SwiGLUOf"
  rows: jax.Array


# An activation, or what computes it.
Activation = jax.Array | RMSNormOf | SwiGLUOf | RowsOf


def activation_shape(src: Activation) -> tuple[int, ...]:
  """The shape of the activation src is or computes."""
  if isinstance(src, RowsOf):
    return (*src.rows.shape, activation_shape(src.src)[-1])
  if isinstance(src, RMSNormOf):
    return src.x.shape
  if isinstance(src, SwiGLUOf):
    return (*src.gate_up.shape[:-1], src.gate_up.shape[-1] // 2)
  return src.shape


def evaluate_fp32(src: Activation) -> jax.Array:
  """The activation in FP32 with no 16-bit intermediate: the specification the fused
  kernels follow."""
  if isinstance(src, RowsOf):
    return evaluate_fp32(_gather(src.src, src.rows))
  if isinstance(src, RMSNormOf):  # the operation order of the model's RMSNorm
    x = src.x.astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + src.eps)
    return x * inv * src.weight.astype(jnp.float32)
  if isinstance(src, SwiGLUOf):
    gate, up = jnp.split(src.gate_up.astype(jnp.float32), 2, axis=-1)
    return jax.nn.silu(gate) * up
  return src.astype(jnp.float32)


def activation_dtype(src: Activation):
  """The dtype of the tensor src reads (its compute dtype)."""
  if isinstance(src, RowsOf):
    return activation_dtype(src.src)
  return (src.x if isinstance(src, RMSNormOf) else
          src.gate_up if isinstance(src, SwiGLUOf) else src).dtype


IMPLS = ("reference", "triton")
KERNEL_BLOCK = 128  # the only activation block the kernel writes (DESIGN.md section 4)


def _gather(src: Activation, rows: jax.Array) -> Activation:
  if isinstance(src, RMSNormOf):
    return dataclasses.replace(src, x=src.x[rows])
  if isinstance(src, SwiGLUOf):
    return SwiGLUOf(src.gate_up[rows])
  return src[rows]


def quantize_activations_reference(src: Activation, *, block: int | None = None
                                   ) -> tuple[jax.Array, jax.Array]:
  """The specification: the activation in FP32 (gathered first for RowsOf), then
  quantize_rows or quantize_blocks(., 1, block)."""
  y = evaluate_fp32(src)
  return quantize_rows(y) if block is None else quantize_blocks(y, 1, block)


def _pick(impl: str | None) -> str:
  if impl is None:
    fast = not reference_only() and on_hopper() and triton_launch.available()
    return "triton" if fast else "reference"
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r}: must be one of {IMPLS}")
  if impl == "triton" and not triton_launch.available():
    raise ImportError("impl='triton' needs triton and jax_triton (the `triton` extra)")
  return impl


def quantize_activations(src: Activation, *, block: int | None = None,
                         impl: str | None = None) -> tuple[jax.Array, jax.Array]:
  """FP8 e4m3 quantization of the activation src is or computes (an array, RMSNormOf,
  SwiGLUOf, or RowsOf one of them: the MoE gather fused in), computed in FP32 without a
  16-bit intermediate.

  block None: per-token scales over the last axis; else 1 x block groups.
  -> (value [..., K] fp8, scale [...] or [..., ceil(K / block)] f32).
  """
  rows = None
  if isinstance(src, RowsOf):
    src, rows = src.src, src.rows
  shape = activation_shape(src)
  if rows is not None and (len(shape) != 2 or rows.ndim != 1):
    raise ValueError(f"RowsOf needs a 2-D source and 1-D rows, got shapes {shape} and "
                     f"{rows.shape}")
  if isinstance(src, RMSNormOf) and src.weight.shape != shape[-1:]:
    raise ValueError(f"RMSNorm weight shape {src.weight.shape} != ({shape[-1]},)")
  if isinstance(src, SwiGLUOf) and src.gate_up.shape[-1] % 2:
    raise ValueError(f"SwiGLU gate_up last axis {src.gate_up.shape[-1]} is odd")
  impl = _pick(impl)
  if impl == "triton" and block not in (None, KERNEL_BLOCK):
    raise ValueError(f"block={block}: the kernel quantizes 1 x {KERNEL_BLOCK} blocks")
  if impl == "reference":
    return quantize_activations_reference(src if rows is None else RowsOf(src, rows),
                                          block=block)
  from onerec_kernels.quantize import triton_gpu
  k = shape[-1]
  if isinstance(src, RMSNormOf):
    data, weight, mode, eps = src.x, src.weight, 1, src.eps
  elif isinstance(src, SwiGLUOf):
    data, weight, mode, eps = src.gate_up, None, 2, 0.0
  else:
    data, weight, mode, eps = src, None, 0, 0.0
  flat = data.reshape(-1, data.shape[-1])
  value, scale = triton_gpu.quantize(flat, weight, rows, k=k, mode=mode, eps=eps,
                                     per_block=block is not None)
  lead = shape[:-1] if rows is None else rows.shape
  return value.reshape(*lead, k), scale.reshape(*lead, *scale.shape[1:])
