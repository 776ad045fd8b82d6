"""Grouped-query attention, the specification (plain JAX, runs anywhere).

q: [B, Q, G, R, dh] (Q query rows a request: its beams times positions; R = H / G query
heads per K/V head), k, v: [B, N, G, dh], mask: bool, broadcastable to [B, G, R, Q, N]
(False: the key is not attended). Scores and softmax in FP32; the probabilities are cast
to v's dtype for the second product, accumulated in FP32 (FP32 inputs multiply in true
FP32, never TF32); out in q's dtype. A masked
score is the most negative finite FP32 value (not -inf), so a row whose keys are all
masked averages every key instead of making NaN.
"""

import jax
import jax.numpy as jnp

MASKED = jnp.finfo(jnp.float32).min  # the score of a masked key


def attention_reference(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array
                        ) -> jax.Array:
  """softmax(q k^T / sqrt(dh), masked) v per (request, K/V head): -> [B, Q, G, R, dh]."""
  scale = q.shape[-1] ** -0.5
  precision = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
  s = jnp.einsum("bqgrd,bsgd->bgrqs", q, k, preferred_element_type=jnp.float32,
                 precision=precision) * scale
  p = jax.nn.softmax(jnp.where(mask, s, MASKED), axis=-1)  # [B, G, R, Q, N]
  return jnp.einsum("bgrqs,bsgd->bqgrd", p.astype(v.dtype), v, precision=precision,
                    preferred_element_type=jnp.float32).astype(q.dtype)
