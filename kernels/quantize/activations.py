"""quantize_activations: the FP8 quantization of a matmul's input activation, fused with
the RMSNorm or SwiGLU that produced it and with the gather of MoE rows; the Triton kernel
on a Hopper GPU, the reference elsewhere.

Fusing the producer saves a pass: its input is read once, and the 16-bit activation is
neither written nor read again (every quantized Linear's input is an RMSNorm or a SwiGLU
output).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from onerec_kernels import backend
from onerec_kernels.gemm_mgpu.core import round_up
from onerec_kernels.quantize.reference import BLOCK, quantize_blocks, quantize_rows


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


@functools.partial(jax.tree_util.register_dataclass, data_fields=["x", "rows"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class RowsOf:
  """Rows rows [R] (int) of the 2-D activation [M, K] that x is or computes: the MoE
  permutation, gathered inside the quantization pass."""

  x: "jax.Array | RMSNormOf | SwiGLUOf"
  rows: jax.Array


# A producer computes a matmul's input activation; the FP8 ops fuse it into the
# activation's quantization. An Activation is the array itself or its producer.
Producer = RMSNormOf | SwiGLUOf | RowsOf
Activation = jax.Array | Producer


def activation_shape(x: Activation) -> tuple[int, ...]:
  """The shape of the activation x is or computes."""
  if isinstance(x, RowsOf):
    return (*x.rows.shape, activation_shape(x.x)[-1])
  if isinstance(x, RMSNormOf):
    return x.x.shape
  if isinstance(x, SwiGLUOf):
    return (*x.gate_up.shape[:-1], x.gate_up.shape[-1] // 2)
  return x.shape


def evaluate_fp32(x: Activation) -> jax.Array:
  """The activation in FP32 with no 16-bit intermediate: the specification the fused
  kernels follow."""
  if isinstance(x, RowsOf):
    return evaluate_fp32(_gather(x.x, x.rows))
  if isinstance(x, RMSNormOf):  # the operation order of the model's RMSNorm
    v = x.x.astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.mean(v * v, axis=-1, keepdims=True) + x.eps)
    return v * inv * x.weight.astype(jnp.float32)
  if isinstance(x, SwiGLUOf):
    gate, up = jnp.split(x.gate_up.astype(jnp.float32), 2, axis=-1)
    return jax.nn.silu(gate) * up
  return x.astype(jnp.float32)


def activation_dtype(x: Activation):
  """The dtype of the tensor x reads (its compute dtype)."""
  if isinstance(x, RowsOf):
    return activation_dtype(x.x)
  return (x.x if isinstance(x, RMSNormOf) else
          x.gate_up if isinstance(x, SwiGLUOf) else x).dtype


def _gather(x: Activation, rows: jax.Array) -> Activation:
  if isinstance(x, RMSNormOf):
    return dataclasses.replace(x, x=x.x[rows])
  if isinstance(x, SwiGLUOf):
    return SwiGLUOf(x.gate_up[rows])
  return x[rows]


def evaluate_rows(x: Activation, pad_rows: int | None = None) -> jax.Array:
  """evaluate_fp32(x) as [M, K] rows, with zero rows appended up to pad_rows (the rows a
  GEMM's tiles take); None: the activation's shape."""
  y = evaluate_fp32(x)
  if pad_rows is None:
    return y
  y = y.reshape(-1, y.shape[-1])
  return jnp.pad(y, ((0, pad_rows - y.shape[0]), (0, 0)))


def check_activation(x: Activation, pad_rows: int | None = None) -> None:
  """Producers whose parts disagree, or pad_rows below the activation's row count, raise
  ValueError naming the shapes."""
  rows = math.prod(activation_shape(x)[:-1])
  if pad_rows is not None and pad_rows < rows:
    raise ValueError(f"pad_rows={pad_rows} is fewer than the activation's {rows} rows")
  if isinstance(x, RowsOf):
    shape = activation_shape(x.x)
    if len(shape) != 2 or x.rows.ndim != 1:
      raise ValueError(f"RowsOf needs a 2-D source and 1-D rows, got shapes {shape} and "
                       f"{x.rows.shape}")
    x = x.x
  if isinstance(x, RMSNormOf) and x.weight.shape != x.x.shape[-1:]:
    raise ValueError(f"RMSNorm weight shape {x.weight.shape} != ({x.x.shape[-1]},)")
  if isinstance(x, SwiGLUOf) and x.gate_up.shape[-1] % 2:
    raise ValueError(f"SwiGLU gate_up last axis {x.gate_up.shape[-1]} is odd")


def quantize_activations_reference(x: Activation, *, block: int | None = None,
                                   pad_rows: int | None = None
                                   ) -> tuple[jax.Array, jax.Array]:
  """The specification: the activation in FP32 (gathered first for RowsOf; as zero-padded
  [pad_rows, K] rows when asked: evaluate_rows), then quantize_rows or
  quantize_blocks(., 1, block)."""
  y = evaluate_rows(x, pad_rows)
  return quantize_rows(y) if block is None else quantize_blocks(y, 1, block)


def _triton(x: Activation, *, block: int | None, pad_rows: int | None
            ) -> tuple[jax.Array, jax.Array]:
  """One Triton pass (triton_gpu.py): per-token or 1 x BLOCK scales."""
  backend.require_triton_gpu("the Triton activation quantization")
  if block not in (None, BLOCK):
    raise backend.Unsupported(f"block={block}: the kernel quantizes 1 x {BLOCK} blocks")
  from onerec_kernels.quantize import triton_gpu
  rows = None
  if isinstance(x, RowsOf):
    x, rows = x.x, x.rows
  shape = activation_shape(x)
  k = shape[-1]
  if isinstance(x, RMSNormOf):
    data, weight, mode, eps = x.x, x.weight, 1, x.eps
  elif isinstance(x, SwiGLUOf):
    data, weight, mode, eps = x.gate_up, None, 2, 0.0
  else:
    data, weight, mode, eps = x, None, 0, 0.0
  flat = data.reshape(-1, data.shape[-1])
  value, scale = triton_gpu.quantize(flat, weight, rows, k=k, mode=mode, eps=eps,
                                     per_block=block is not None, out_rows=pad_rows)
  if pad_rows is not None:
    return value, scale
  lead = shape[:-1] if rows is None else rows.shape
  return value.reshape(*lead, k), scale.reshape(*lead, *scale.shape[1:])


IMPLEMENTATIONS = backend.Implementations("quantize_activations", {
    "triton": _triton,
    "reference": quantize_activations_reference,
})


def quantize_activations(x: Activation, *, block: int | None = None,
                         pad_rows: int | None = None, impl: str | None = None
                         ) -> tuple[jax.Array, jax.Array]:
  """FP8 e4m3 quantization of the activation x is or computes (an array, RMSNormOf,
  SwiGLUOf, or RowsOf one of them: the MoE gather fused in), computed in FP32 without a
  16-bit intermediate.

  block None: per-token scales over the last axis; else 1 x block groups.
  -> (value [..., K] fp8, scale [...] or [..., ceil(K / block)] f32). pad_rows: the
  result as [pad_rows, K] rows instead, the activation's M rows then zero rows (value 0,
  scale 1): the rows a GEMM's tiles take, written by the same pass, so that the GEMM pads
  nothing. impl: None (the table's order: "triton", then "reference"), or one of them.
  """
  check_activation(x, pad_rows)
  return IMPLEMENTATIONS(impl, x, block=block, pad_rows=pad_rows)


def per_token_linear(table: backend.Implementations, impl: str | None, x: Activation,
                     quantize, w_q: jax.Array, w_scale: jax.Array, out_dtype,
                     tile_config) -> jax.Array:
  """quantize(x, pad_rows=R) -> (value [R, K], scale [R]) per token, then table's GEMM on
  those rows with w_q [N, K] and w_scale [N] -> [..., N] in out_dtype (default: x's
  dtype). R is the M rows rounded up to tile_config(M, N, K).cta_m where the table's
  Hopper kernel runs and its tile for R rows divides R too (the quantize pass writes the
  padding rows: a 32-token decode step's GEMM then needs no padding passes), else M."""
  shape = activation_shape(x)
  m, (n, k) = math.prod(shape[:-1]), w_q.shape
  rows = m
  if table.order(impl)[0] != backend.REFERENCE and backend.hopper_kernels():
    tile = tile_config(m, n, k).cta_m
    padded = round_up(m, tile)
    rows = padded if padded % tile_config(padded, n, k).cta_m == 0 else m
  x_q, x_scale = quantize(x, pad_rows=rows)
  y = table(impl, x_q, x_scale, w_q, w_scale, out_dtype=out_dtype or activation_dtype(x))
  return y[:m].reshape(*shape[:-1], n)
