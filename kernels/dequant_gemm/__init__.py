"""Matmuls of weights quantized in the formats that have no FP8 or INT8 GEMM here (INT4 and
FP4 weights, MXFP8, FP8 e5m2, per-tensor scales): one implementations table each. The
4-bit weights are stored packed two to a byte (formats.pack_nibbles); for 1 x g group
scales (INT4 group-128, MXFP4) with 16-bit (W4A16) or per-token FP8 (W4A8) activations,
"triton" (triton_gpu.py, Hopper) dequantizes them inside its main loop; everything else,
and every machine without a Hopper GPU and jax_triton, runs the reference, which
unpacks, dequantizes and multiplies in FP32 (docs/frontier.md)."""

import jax
import jax.numpy as jnp

from onerec_kernels import backend
from onerec_kernels.dequant_gemm.reference import (activation_fp32,
                                                   dequant_grouped_gemm_reference,
                                                   dequant_linear_reference)
from onerec_kernels.quantize.activations import (Activation, activation_dtype,
                                                 activation_shape, evaluate_fp32,
                                                 quantize_activations)
from onerec_kernels.quantize.formats import E2M1, E4M3, Quantizer

PER_TOKEN_FP8 = Quantizer(E4M3)  # the W4A8 activation quantizer the kernel takes
MIN_GROUP = 32  # the least scale group: one FP8 tl.dot's K


def _triton_operands(x: Activation, weight: Quantizer, activation: Quantizer | None
                     ) -> tuple[jax.Array, jax.Array | None]:
  """The kernel's activation rows [M, K] and per-token scales [M] (None for 16-bit), or
  Unsupported for the quantizers it does not run."""
  backend.require_triton_gpu("the Triton 4-bit GEMM")
  group = weight.group
  if not weight.packed or weight.tensor or group is None or group < MIN_GROUP or (
      group & (group - 1)):
    raise backend.Unsupported(f"the Triton 4-bit GEMM takes 4-bit weights in 1 x g "
                              f"groups (g a power of two from {MIN_GROUP}), not "
                              f"{weight.name}")
  k = activation_shape(x)[-1]
  if activation == PER_TOKEN_FP8:
    value, scale = quantize_activations(x)
    return value.reshape(-1, k), scale.reshape(-1)
  dtype = activation_dtype(x)
  if activation is not None or dtype not in (jnp.bfloat16, jnp.float16, jnp.float32):
    raise backend.Unsupported(f"the Triton 4-bit GEMM takes per-token FP8 e4m3 or 16/32-bit "
                              f"float activations, not {activation and activation.name} "
                              f"on {dtype}")
  return evaluate_fp32(x).astype(dtype).reshape(-1, k), None


def _triton_grouped(x, w_value, w_scale, group_sizes, *, weight, activation, out_dtype):
  a, a_scale = _triton_operands(x, weight, activation)
  from onerec_kernels.dequant_gemm import triton_gpu
  return triton_gpu.dequant_grouped_gemm(a, a_scale, w_value, w_scale, group_sizes,
                                         group=weight.group, e2m1=weight.format is E2M1,
                                         out_dtype=out_dtype)


def _triton_linear(x, w_value, w_scale, *, weight, activation, out_dtype):
  """The dense product as one group."""
  a, a_scale = _triton_operands(x, weight, activation)
  from onerec_kernels.dequant_gemm import triton_gpu
  y = triton_gpu.dequant_grouped_gemm(
      a, a_scale, w_value[None], w_scale[None], jnp.array([a.shape[0]], jnp.int32),
      group=weight.group, e2m1=weight.format is E2M1, out_dtype=out_dtype)
  return y.reshape(*activation_shape(x)[:-1], w_value.shape[0])


IMPLEMENTATIONS = backend.Implementations("dequant_linear", {
    "triton": _triton_linear,
    "reference": dequant_linear_reference,
})
GROUPED_IMPLEMENTATIONS = backend.Implementations("dequant_grouped_gemm", {
    "triton": _triton_grouped,
    "reference": dequant_grouped_gemm_reference,
})


def _check(x: Activation, w_value, w_scale, weight: Quantizer, rank: int) -> None:
  """A weight whose stored shape or scale does not fit x's K raises ValueError naming
  the shapes."""
  k = activation_shape(x)[-1]
  stored = -(-k // 2) if weight.packed else k
  logical = (*w_value.shape[:-1], k)
  if (w_value.ndim != rank or w_value.shape[-1] != stored
      or (weight.packed and w_value.dtype != jnp.uint8)
      or tuple(w_scale.shape) != weight.scale_shape(logical)):
    raise ValueError(f"dequant GEMM ({weight.name}): an activation of K={k} needs a "
                     f"rank-{rank} weight {'of uint8 ' if weight.packed else ''}[..., "
                     f"{stored}] and scales {weight.scale_shape(logical)}; got "
                     f"{w_value.dtype} {tuple(w_value.shape)} and {tuple(w_scale.shape)}")


def dequant_linear(x: Activation, w_value, w_scale, *, weight: Quantizer,
                   activation: Quantizer | None, out_dtype=None, impl: str | None = None):
  """x [..., K] (or its producer) times the weight w_value [N, K] quantized by `weight`
  (4-bit formats packed: uint8 [N, ceil(K/2)]), the activation through `activation`
  (None: left in its compute dtype) -> [..., N].

  impl: None (the table's order: "triton", the Hopper kernel for 4-bit group-scaled
  weights, then "reference"), or one of them."""
  _check(x, w_value, w_scale, weight, 2)
  return IMPLEMENTATIONS(impl, x, w_value, w_scale, weight=weight, activation=activation,
                         out_dtype=out_dtype or activation_dtype(x))


def dequant_grouped_gemm(x: Activation, w_value, w_scale, group_sizes, *,
                         weight: Quantizer, activation: Quantizer | None, out_dtype=None,
                         impl: str | None = None):
  """The grouped form of dequant_linear: x [M, K] sorted by group, w_value [E, N, K]
  (packed [E, N, ceil(K/2)]); rows past sum(group_sizes) are zero."""
  _check(x, w_value, w_scale, weight, 3)
  return GROUPED_IMPLEMENTATIONS(impl, x, w_value, w_scale, group_sizes, weight=weight,
                                 activation=activation,
                                 out_dtype=out_dtype or activation_dtype(x))


__all__ = ["GROUPED_IMPLEMENTATIONS", "IMPLEMENTATIONS", "MIN_GROUP", "PER_TOKEN_FP8",
           "activation_fp32", "dequant_grouped_gemm", "dequant_grouped_gemm_reference",
           "dequant_linear", "dequant_linear_reference"]
