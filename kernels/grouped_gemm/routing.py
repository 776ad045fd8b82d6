"""Routing permutation around the grouped GEMM: sort (token, slot) pairs by expert and
combine the expert outputs back, weighted by the gates."""

import jax
import jax.numpy as jnp


def sort_by_expert(expert_ids: jax.Array, num_experts: int
                   ) -> tuple[jax.Array, jax.Array]:
  """Stable sort of the T*k routed (token, slot) pairs by expert.

  expert_ids: [T, k] int -> (order [T*k]: flat (token*k + slot) index of each sorted row,
  group_sizes [num_experts] int32). Sorted row i holds token order[i] // k. Pairs with
  an id outside [0, num_experts) sort last and count in no group.
  """
  flat = expert_ids.reshape(-1).astype(jnp.int32)
  # Ids outside [0, E) belong to no expert: sorted last, past every group (the grouped
  # GEMM's rows there come out zero, so they add nothing in combine).
  flat = jnp.where((flat >= 0) & (flat < num_experts), flat, num_experts)
  order = jnp.argsort(flat, stable=True).astype(jnp.int32)
  group_sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
  return order, group_sizes


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
