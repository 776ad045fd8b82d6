"""Grouped-query attention, the specification (plain JAX, runs anywhere).

q: [B, Q, G, R, dh] (Q query rows a request: its beams times positions; R = H / G query
heads per K/V head), k, v: [B, N, G, dh], mask: bool, broadcastable to [B, G, R, Q, N]
(False: the key is not attended); causal: query row i attends keys up to i + N - Q (the
queries are the last Q of the N positions; prefill has Q = N). Scores and softmax in FP32;
the probabilities are cast to v's dtype for the second product, accumulated in FP32 (FP32
inputs multiply in true FP32, never TF32); out in q's dtype. A masked score is the most
negative finite FP32 value (not -inf), so a row whose keys are all masked averages every
key it may see instead of making NaN; a key after a causal row's position gets no weight
at all (it is not one the row may see), so that row averages the keys up to it. lse:
also return each row's log-sum-exp of its scores, [B, Q, G, R] f32, with which attention
to these keys merges with attention to others.
"""

import jax
import jax.numpy as jnp

MASKED = jnp.finfo(jnp.float32).min  # the score of a masked key


def causal_mask(q_len: int, n: int) -> jax.Array:
  """[1, 1, 1, Q, N] bool: query row i sees keys up to i + n - q_len."""
  return (jnp.arange(n)[None, :] <= jnp.arange(q_len)[:, None] + n - q_len)[None, None, None]


def attention_reference(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                        causal: bool = False, lse: bool = False):
  """softmax(q k^T / sqrt(dh), masked) v per (request, K/V head): -> [B, Q, G, R, dh]
  (and the log-sum-exp [B, Q, G, R] with lse)."""
  scale = q.shape[-1] ** -0.5
  precision = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
  s = jnp.einsum("bqgrd,bsgd->bgrqs", q, k, preferred_element_type=jnp.float32,
                 precision=precision) * scale
  s = jnp.where(mask, s, MASKED)  # [B, G, R, Q, N]
  if causal:
    s = jnp.where(causal_mask(q.shape[1], k.shape[1]), s, -jnp.inf)
  p = jax.nn.softmax(s, axis=-1)
  o = jnp.einsum("bgrqs,bsgd->bqgrd", p.astype(v.dtype), v, precision=precision,
                 preferred_element_type=jnp.float32).astype(q.dtype)
  if not lse:
    return o
  return o, jnp.transpose(jax.nn.logsumexp(s, axis=-1), (0, 3, 1, 2))  # [B, Q, G, R]
