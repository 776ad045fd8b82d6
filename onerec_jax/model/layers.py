"""The model's building blocks: the two matmul entry points (Linear, GroupedLinear),
RMSNorm and SwiGLU.

Every weight product of the model goes through Linear and every expert product through
GroupedLinear, so the FP8 interceptor (onerec_jax.quant) has exactly two places to act.
Weights are K-major ([N, K], experts [E, N, K]), the PyTorch Linear layout.

Both take an optional `producer`: the RMSNormOf / SwiGLUOf that computed their input x.
Their own product ignores it (it uses x); the FP8 ops fuse it into the activation
quantization, reading the producer's input once instead of x (onerec_kernels.quantize).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import onerec_kernels.grouped_gemm as grouped_gemm_op
from onerec_kernels.quantize import RMSNormOf, SwiGLUOf

Dtype = Any

# fan-in scaled init for K-major weights: fan_in is the last axis.
_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                in_axis=-1, out_axis=-2)
_expert_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                in_axis=-1, out_axis=-2, batch_axis=(0,))


def matmul_precision(dtype: Dtype):
  """FP32 models compute in true FP32 (no TF32 on GPU); lower dtypes use the default."""
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


class Linear(nn.Module):
  """y = x @ weight.T, bias-free; weight [features, K]. rows=(lo, hi) computes only those
  output features (a Qwen3 head over one level's token range)."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, producer=None, rows: tuple[int, int] | None = None
               ) -> jax.Array:  # [..., K] -> [..., N]
    del producer  # x is what it computed
    w = self.param("weight", _kernel_init, (self.features, x.shape[-1]), self.param_dtype)
    if rows is not None:
      w = w[rows[0]:rows[1]]
    y = jnp.einsum("...k,nk->...n", x.astype(self.dtype), w.astype(self.dtype),
                   preferred_element_type=jnp.float32,
                   precision=matmul_precision(self.dtype))
    return y.astype(self.dtype)


class GroupedLinear(nn.Module):
  """Per-expert Linear over rows sorted by expert; weight [num_experts, features, K]."""

  num_experts: int
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, group_sizes: jax.Array,
               producer=None) -> jax.Array:  # [M, K] -> [M, N]
    del producer  # x is what it computed
    w = self.param("weight", _expert_init, (self.num_experts, self.features, x.shape[-1]),
                   self.param_dtype)
    return grouped_gemm_op.grouped_gemm(x.astype(self.dtype), w.astype(self.dtype),
                                        group_sizes, out_dtype=self.dtype)


class RMSNorm(nn.Module):
  """x * rsqrt(mean(x^2) + eps) * weight, computed in FP32, returned in `dtype`."""

  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.param("weight", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * w.astype(jnp.float32)).astype(self.dtype)

  def producer(self, x: jax.Array) -> RMSNormOf:
    """This norm of x as a producer for the matmuls it feeds (call the norm first)."""
    return RMSNormOf(x, self.get_variable("params", "weight"), self.eps)


def valid_first(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """mask [B, N] bool -> (order [B, N], lengths [B] int32): gathered by order, each row's
  valid positions come first, in their order, and its mask is arange(N) < lengths."""
  return jnp.argsort(~mask, axis=1, stable=True), jnp.sum(mask, axis=1, dtype=jnp.int32)


def attend_decoded(q: jax.Array, keys: list[jax.Array], values: list[jax.Array],
                   prefix: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
  """One query position's attention over a few keys given one by one, merged with its
  attention to other keys when prefix = (out, log-sum-exp) of that attention.

  q [B, W, G, R, dh]; keys, values: lists of [B, W, G, dh]; prefix: ([B, W, G, R, dh],
  [B, W, G, R]) -> [B, W, G, R, dh] in q's dtype. Scores in FP32 as products summed over
  dh (elementwise ops that XLA fuses with the gathers producing the keys), weights
  normalised in FP32 and cast to the values' dtype, the weighted sum accumulated in FP32.
  """
  f32 = lambda a: a.astype(jnp.float32)
  qs = f32(q) * q.shape[-1] ** -0.5
  s = jnp.stack([jnp.sum(qs * f32(k)[:, :, :, None], axis=-1) for k in keys], -1)  # [.., n]
  top = jnp.max(s, axis=-1)  # [B, W, G, R]
  if prefix is not None:
    top = jnp.maximum(top, prefix[1])
  w = jnp.exp(s - top[..., None])
  total = jnp.sum(w, axis=-1)
  if prefix is not None:
    w_prefix = jnp.exp(prefix[1] - top)
    total = total + w_prefix
  weights = f32((w / total[..., None]).astype(values[0].dtype))
  o = sum(weights[..., j, None] * f32(v)[:, :, :, None] for j, v in enumerate(values))
  if prefix is not None:
    o = o + (w_prefix / total)[..., None] * f32(prefix[0])
  return o.astype(q.dtype)


def swiglu(gate_up: jax.Array) -> jax.Array:
  """silu(gate) * up for a fused [..., 2F] projection laid out [gate; up]."""
  gate, up = jnp.split(gate_up, 2, axis=-1)
  return nn.silu(gate) * up


class SwiGLU(nn.Module):
  """Dense SwiGLU FFN: down(silu(gate(x)) * up(x)), gate and up fused in one Linear."""

  d_model: int
  d_ff: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, producer: RMSNormOf | None = None) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = Linear(2 * self.d_ff, name="gate_up_proj", **kw)(x, producer=producer)
    return Linear(self.d_model, name="down_proj", **kw)(swiglu(h), producer=SwiGLUOf(h))
