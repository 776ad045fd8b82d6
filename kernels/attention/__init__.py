"""Grouped-query attention for the decoder: the beam-shared cross-attention to a
request's context (every beam of a request attends the same N context rows) and, through
the reference, the short causal self-attention."""

import jax
import jax.numpy as jnp

from onerec_kernels import backend
from onerec_kernels.attention.reference import MASKED, attention_reference, causal_mask

_FLOATS = (jnp.float32, jnp.bfloat16, jnp.float16)
MAX_HEAD = 256  # the kernel's widest head (one register tile of the head axis)
MIN_KEYS = 16  # fewer keys than tl.dot's least block: the reference is as good


def key_mask_of(mask: jax.Array, b: int, n: int) -> jax.Array | None:
  """mask as a per-key [B, N] mask, if it is one ([B or 1, 1, 1, 1, N]); else None."""
  if mask.ndim == 5 and mask.shape[1:4] == (1, 1, 1) and mask.shape[4] == n:
    return jnp.broadcast_to(mask[:, 0, 0, 0], (b, n))
  return None


def _triton(q, k, v, mask, *, causal, lse):
  backend.require_triton_gpu("the Triton attention")
  b, n = k.shape[:2]
  key_mask = key_mask_of(mask, b, n)
  if key_mask is None:
    raise backend.Unsupported(f"the Triton attention takes a per-key mask [B, 1, 1, 1, N], "
                              f"not one of shape {mask.shape}")
  if not (q.dtype == k.dtype == v.dtype and q.dtype in _FLOATS) or q.shape[-1] > MAX_HEAD:
    raise backend.Unsupported(f"the Triton attention takes one float dtype and heads up "
                              f"to {MAX_HEAD}: q {q.dtype} {q.shape}, k {k.dtype}, v {v.dtype}")
  from onerec_kernels.attention import triton_gpu
  return triton_gpu.attention(q, k, v, key_mask, causal=causal, lse=lse)


IMPLEMENTATIONS = backend.Implementations("attention", {
    "triton": _triton,
    "reference": attention_reference,
}, prefer={"triton": lambda q, k, v, mask, **_: k.shape[1] >= MIN_KEYS})


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, *,
              causal: bool = False, lse: bool = False, impl: str | None = None):
  """Grouped-query attention (reference.py has the contract): q [B, Q, G, R, dh], k, v
  [B, N, G, dh], mask broadcastable to [B, G, R, Q, N] or None, causal (query row i sees
  keys up to i + N - Q) -> [B, Q, G, R, dh], and with lse also each row's log-sum-exp
  [B, Q, G, R] f32.

  impl: None (the table's order: "triton", the fused kernel, for a per-key mask
  [B, 1, 1, 1, N] on a Hopper GPU; then "reference"), or one of them.
  """
  if q.ndim != 5 or k.shape != v.shape or k.shape[0] != q.shape[0] or (
      k.shape[2:] != (q.shape[2], q.shape[4])):
    raise ValueError(f"attention: q [B, Q, G, R, dh], k and v [B, N, G, dh]; got q "
                     f"{q.shape}, k {k.shape}, v {v.shape}")
  if causal and q.shape[1] > k.shape[1]:
    raise ValueError(f"attention: causal with more queries ({q.shape[1]}) than keys "
                     f"({k.shape[1]})")
  if mask is None:
    mask = jnp.ones((1, 1, 1, 1, k.shape[1]), bool)
  return IMPLEMENTATIONS(impl, q, k, v, mask, causal=causal, lse=lse)


__all__ = ["IMPLEMENTATIONS", "MASKED", "attention", "attention_reference", "causal_mask",
           "key_mask_of"]
