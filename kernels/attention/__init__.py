"""Grouped-query attention for the decoder: the beam-shared cross-attention to a
request's context (every beam of a request attends the same N context rows), the causal
prefill of a prompt and, through the reference, the short causal self-attention."""

import jax
import jax.numpy as jnp

from onerec_kernels import backend
from onerec_kernels.attention.reference import MASKED, attention_reference, causal_mask

_FLOATS = (jnp.float32, jnp.bfloat16, jnp.float16)
MAX_HEAD = 256  # the kernel's widest head (one register tile of the head axis)
MIN_KEYS = 16  # fewer keys than tl.dot's least block: the reference is as good
# Shorter prompts go to the Triton kernel: on an H200 the two tie at 256 keys and cuDNN's
# is 1.7x at 1000 (bench/results/attention_h200.json).
MIN_CUDNN_KEYS = 512
# Non-causal attention goes to cuDNN from this many queries a request (the beams of a
# wide step); fewer (the first step's one beam) to the Triton kernel.
MIN_CUDNN_QUERIES = 128


def key_mask_of(mask: jax.Array, b: int, n: int) -> jax.Array | None:
  """mask as a per-key [B, N] mask, if it is one ([B or 1, 1, 1, 1, N]); else None."""
  if mask.ndim == 5 and mask.shape[1:4] == (1, 1, 1) and mask.shape[4] == n:
    return jnp.broadcast_to(mask[:, 0, 0, 0], (b, n))
  return None


def prefix_mask(key_lengths: jax.Array, n: int) -> jax.Array:
  """[B, 1, 1, 1, N] bool, the mask key_lengths [B] stand for: request b attends its first
  key_lengths[b] keys, all N where key_lengths[b] <= 0."""
  lengths = jnp.where(key_lengths > 0, key_lengths, n)
  return (jnp.arange(n)[None, :] < lengths[:, None])[:, None, None, None, :]


def _triton(q, k, v, mask, *, causal, lse, key_lengths=None):
  backend.require_triton_gpu("the Triton attention")
  b, n = k.shape[:2]
  key_mask = (prefix_mask(key_lengths, n)[:, 0, 0, 0] if key_lengths is not None
              else key_mask_of(mask, b, n))
  if key_mask is None:
    raise backend.Unsupported(f"the Triton attention takes a per-key mask [B, 1, 1, 1, N], "
                              f"not one of shape {mask.shape}")
  if not (q.dtype == k.dtype == v.dtype and q.dtype in _FLOATS) or q.shape[-1] > MAX_HEAD:
    raise backend.Unsupported(f"the Triton attention takes one float dtype and heads up "
                              f"to {MAX_HEAD}: q {q.dtype} {q.shape}, k {k.dtype}, v {v.dtype}")
  from onerec_kernels.attention import triton_gpu
  return triton_gpu.attention(q, k, v, key_mask, causal=causal, lse=lse)


def _cudnn(q, k, v, mask, *, causal, lse, key_lengths=None):
  """cuDNN's fused flash attention (jax.nn.dot_product_attention) for the causal prefill
  (Q = N) and the non-causal attention of many queries to a context (the beams of a
  request to its context), 16-bit, each request's keys a prefix: cuDNN takes them as
  key counts. key_lengths are those counts as they are; a per-key mask is checked on the
  device at run time (a lax.cond, which waits for the device before launching the rest),
  and when one request's is not a prefix (or is empty) the whole batch goes through the
  next implementation."""
  b, nq, g, r, d = q.shape
  n = k.shape[1]
  key_mask = None if key_lengths is not None else key_mask_of(mask, b, n)
  if not backend.on_hopper():
    raise backend.Unsupported(f"cuDNN's attention is taken on Hopper GPUs; the default "
                              f"device is {jax.devices()[0].device_kind}")
  if lse or key_mask is None and key_lengths is None or causal and nq != n:
    raise backend.Unsupported("cuDNN's attention here serves the causal prefill (Q = N) "
                              "and non-causal attention, with a per-key mask and no "
                              "log-sum-exp")
  if not (q.dtype == k.dtype == v.dtype and q.dtype in (jnp.bfloat16, jnp.float16)) or (
      d % 8 or d > 128):
    raise backend.Unsupported(f"cuDNN's attention takes bf16 or fp16 and heads up to 128 "
                              f"wide, a multiple of 8: q {q.dtype} {q.shape}")

  def fused(q, k, v, lengths):
    o = jax.nn.dot_product_attention(q.reshape(b, nq, g * r, d), k, v, is_causal=causal,
                                     key_value_seq_lengths=lengths, implementation="cudnn")
    return o.reshape(q.shape)  # [B, T, G * R, dh]: query head g * R + r reads K/V head g

  try:
    if key_lengths is not None:
      return fused(q, k, v, key_lengths)
    lengths = jnp.sum(key_mask, axis=1, dtype=jnp.int32)  # [B]
    prefix = jnp.all(key_mask == (jnp.arange(n)[None, :] < lengths[:, None])) & jnp.all(
        lengths > 0)
    return jax.lax.cond(prefix, lambda q, k, v: fused(q, k, v, lengths),
                        lambda q, k, v: IMPLEMENTATIONS.after(
                            "cudnn", q, k, v, mask, causal=causal, lse=False), q, k, v)
  except (RuntimeError, ValueError, NotImplementedError) as e:  # no usable cuDNN here
    raise backend.Unsupported(f"cuDNN's attention: {str(e).splitlines()[0]}") from e


def _reference(q, k, v, mask, *, causal, lse, key_lengths=None):
  if key_lengths is not None:
    mask = prefix_mask(key_lengths, k.shape[1])
  return attention_reference(q, k, v, mask, causal=causal, lse=lse)


IMPLEMENTATIONS = backend.Implementations("attention", {
    "cudnn": _cudnn,
    "triton": _triton,
    "reference": _reference,
}, prefer={"cudnn": lambda q, k, v, mask, causal=False, **_: k.shape[1] >= MIN_CUDNN_KEYS
           and (causal or q.shape[1] >= MIN_CUDNN_QUERIES),
           "triton": lambda q, k, v, mask, **_: k.shape[1] >= MIN_KEYS})


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, *,
              key_lengths: jax.Array | None = None, causal: bool = False, lse: bool = False,
              impl: str | None = None):
  """Grouped-query attention (reference.py has the contract): q [B, Q, G, R, dh], k, v
  [B, N, G, dh], mask broadcastable to [B, G, R, Q, N] or None, causal (query row i sees
  keys up to i + N - Q) -> [B, Q, G, R, dh], and with lse also each row's log-sum-exp
  [B, Q, G, R] f32.

  key_lengths: [B] int, instead of a mask: request b attends its first key_lengths[b]
  keys (prefix_mask), all N where key_lengths[b] <= 0 (it has no key of its own); this is
  the mask cuDNN's fused attention takes with no run-time check.

  impl: None (the table's order: "cudnn", cuDNN's fused attention, for at least
  MIN_CUDNN_KEYS keys in 16 bits on a Hopper GPU, causal (Q = N) or with at least
  MIN_CUDNN_QUERIES queries, key_lengths or a per-key mask, heads up to 128, no
  log-sum-exp; "triton", the fused kernel, for key_lengths or a per-key mask
  [B, 1, 1, 1, N] on a Hopper GPU; then "reference"), or one of them.
  """
  if q.ndim != 5 or k.shape != v.shape or k.shape[0] != q.shape[0] or (
      k.shape[2:] != (q.shape[2], q.shape[4])):
    raise ValueError(f"attention: q [B, Q, G, R, dh], k and v [B, N, G, dh]; got q "
                     f"{q.shape}, k {k.shape}, v {v.shape}")
  if causal and q.shape[1] > k.shape[1]:
    raise ValueError(f"attention: causal with more queries ({q.shape[1]}) than keys "
                     f"({k.shape[1]})")
  if key_lengths is not None:
    key_lengths = jnp.asarray(key_lengths)
    if mask is not None:
      raise ValueError("attention: a mask or key_lengths, not both")
    if key_lengths.shape != q.shape[:1] or not jnp.issubdtype(key_lengths.dtype, jnp.integer):
      raise ValueError(f"attention: key_lengths must be [B] = [{q.shape[0]}] integers, got "
                       f"{key_lengths.dtype} {key_lengths.shape}")
    n = k.shape[1]
    key_lengths = jnp.where(key_lengths > 0, jnp.minimum(key_lengths, n), n).astype(jnp.int32)
    return IMPLEMENTATIONS(impl, q, k, v, None, key_lengths=key_lengths, causal=causal,
                           lse=lse)
  if mask is None:
    mask = jnp.ones((1, 1, 1, 1, k.shape[1]), bool)
  return IMPLEMENTATIONS(impl, q, k, v, mask, causal=causal, lse=lse)


__all__ = ["IMPLEMENTATIONS", "MASKED", "attention", "attention_reference", "causal_mask",
           "key_mask_of", "prefix_mask"]
