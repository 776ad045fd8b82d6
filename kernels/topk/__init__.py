"""Top-k over the last axis: the entry point generation and routing call."""

import jax


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Values and indices of the k largest entries of each row, descending, ties broken by
  the lowest index (jax.lax.top_k's contract, which is the reference)."""
  return jax.lax.top_k(x, k)


__all__ = ["top_k"]
