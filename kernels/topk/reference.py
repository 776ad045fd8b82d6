"""Plain-JAX specifications of the three top-k ops; every backend is tested against these.

Order: jax.lax.top_k's total order on floats (descending, ties to the lowest index,
+NaN above +inf, -NaN below -inf, -0.0 below +0.0).
"""

import jax
import jax.numpy as jnp

ROUTER_SCORES = ("sigmoid", "softmax")


def top_k_reference(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Values and int32 indices of the k largest entries of each row of x [..., N]."""
  return jax.lax.top_k(x, k)


def beam_scores_reference(logits: jax.Array, beam_scores: jax.Array,
                          valid_mask: jax.Array | None = None) -> jax.Array:
  """Candidate scores [B, W*V] in float32: log_softmax(logits) + beam score, invalid -inf.

  logits [B, W, V], beam_scores [B, W], valid_mask [B, W, V] bool or None.
  """
  b, w, v = logits.shape
  scores = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, W, V]
  scores = scores + beam_scores.astype(jnp.float32)[..., None]
  if valid_mask is not None:
    scores = jnp.where(valid_mask, scores, -jnp.inf)
  return scores.reshape(b, w * v)


def beam_topk_reference(logits: jax.Array, beam_scores: jax.Array, k: int,
                        valid_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Top k of beam_scores_reference per request: (scores [B, k] f32, flat index [B, k]
  into W*V, i.e. beam = index // V, token = index % V)."""
  return jax.lax.top_k(beam_scores_reference(logits, beam_scores, valid_mask), k)


def router_scores_reference(logits: jax.Array, score: str = "sigmoid") -> jax.Array:
  """Router affinities [T, E] in float32 from logits [T, E]."""
  if score not in ROUTER_SCORES:
    raise ValueError(f"score={score!r}: must be one of {ROUTER_SCORES}")
  x = logits.astype(jnp.float32)
  return jax.nn.sigmoid(x) if score == "sigmoid" else jax.nn.softmax(x, axis=-1)


def router_topk_reference(logits: jax.Array, bias: jax.Array | None, k: int,
                          score: str = "sigmoid", norm_topk_prob: bool = True,
                          scaling: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """DeepSeek-V3 routing: experts chosen on scores + bias, gates from the unbiased scores.

  logits [T, E], bias [E] or None -> (ids [T, k] int32, gates [T, k] f32). With
  norm_topk_prob the gates are divided by their sum (+1e-20, as DeepSeek-V3), then all
  gates are multiplied by scaling.
  """
  scores = router_scores_reference(logits, score)  # [T, E]
  choice = scores if bias is None else scores + bias.astype(jnp.float32)
  _, ids = jax.lax.top_k(choice, k)  # [T, k]
  return ids, router_gates(scores, ids, norm_topk_prob, scaling)


def router_gates(scores: jax.Array, ids: jax.Array, norm_topk_prob: bool,
                 scaling: float) -> jax.Array:
  """Gates [T, k] of the chosen experts ids [T, k] from the unbiased scores [T, E]."""
  gates = jnp.take_along_axis(scores, ids, axis=-1)
  if norm_topk_prob:
    gates = gates / (jnp.sum(gates, axis=-1, keepdims=True) + 1e-20)
  return gates * scaling
