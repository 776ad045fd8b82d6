"""Routing permutation around the grouped GEMM: sort (token, slot) pairs by expert and
combine the expert outputs back, weighted by the gates."""

import jax
import jax.numpy as jnp


ONE_HOT_LIMIT = 2 ** 26  # elements of the counting sort's [T*k, E + 1] one-hot (256 MB)


def sort_by_expert(expert_ids: jax.Array, num_experts: int
                   ) -> tuple[jax.Array, jax.Array]:
  """Stable sort of the T*k routed (token, slot) pairs by expert.

  expert_ids: [T, k] int -> (order [T*k]: flat (token*k + slot) index of each sorted row,
  group_sizes [num_experts] int32). Sorted row i holds token order[i] // k. Pairs with
  an id outside [0, num_experts) sort last and count in no group.

  A counting sort: each pair's rank among its expert's pairs is a cumulative sum over a
  one-hot [T*k, E + 1], its row the expert's start plus that rank. 14 us against 62 for
  XLA's stable argsort at moe-4b's 49152 x 53 (H100). Past ONE_HOT_LIMIT elements the
  argsort, which needs no such buffer.
  """
  flat = expert_ids.reshape(-1).astype(jnp.int32)
  # Ids outside [0, E) belong to no expert: sorted last, past every group (the grouped
  # GEMM's rows there come out zero, so they add nothing in combine).
  flat = jnp.where((flat >= 0) & (flat < num_experts), flat, num_experts)
  n = flat.shape[0]
  if n * (num_experts + 1) > ONE_HOT_LIMIT:
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)
    return order, jnp.bincount(flat, length=num_experts).astype(jnp.int32)
  one_hot = (flat[:, None] == jnp.arange(num_experts + 1, dtype=jnp.int32)).astype(
      jnp.int32)  # [T*k, E + 1]
  rank = jnp.take_along_axis(jnp.cumsum(one_hot, axis=0), flat[:, None], axis=1)[:, 0] - 1
  sizes = jnp.sum(one_hot, axis=0)  # [E + 1]
  row = (jnp.cumsum(sizes) - sizes)[flat] + rank  # [T*k] sorted row of each pair
  order = jnp.zeros_like(flat).at[row].set(jnp.arange(n, dtype=jnp.int32),
                                           unique_indices=True)
  return order, sizes[:num_experts]


def combine(y_sorted: jax.Array, order: jax.Array, gates: jax.Array) -> jax.Array:
  """Un-permutes expert outputs and sums each token's slots weighted by its gates.

  y_sorted: [T*k, N], order: [T*k], gates: [T, k] -> [T, N] in FP32. A gather through the
  inverse permutation (a scatter of T*k indices) that XLA fuses with the weighted sum:
  one read of y_sorted, where scattering the rows wrote and re-read a [T*k, N] FP32 copy.
  """
  t, k = gates.shape
  slots = jnp.arange(order.shape[0], dtype=order.dtype)
  inverse = jnp.zeros_like(order).at[order].set(slots)  # [T*k] sorted row of each slot
  y = y_sorted[inverse].astype(jnp.float32).reshape(t, k, -1)  # [T, k, N]
  return jnp.sum(y * gates.astype(jnp.float32)[:, :, None], axis=1)
