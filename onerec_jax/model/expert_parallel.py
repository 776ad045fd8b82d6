"""The expert-parallel switch of the MoE layers: the mesh axis their routed experts are
sharded over, set around a trace inside jax.shard_map (onerec_jax.generate.sharding sets
it; docs/scaling.md).

Unset (the default), every device holds every expert. Set to an axis of n devices, each
device holds ceil(E / n) consecutive experts of every MoE layer (E padded with experts no
token is routed to), and RoutedExperts exchanges tokens over that axis: it all-gathers the
axis' tokens with their routing, runs its own experts' rows and reduce-scatters the
partial outputs, so each device gets the full MoE output of its own tokens.
"""

import contextlib
import contextvars
from typing import Iterator

ROUTED_EXPERTS = "experts"  # MoE's name for its RoutedExperts: the parameters to shard

_axis: contextvars.ContextVar[str | None] = contextvars.ContextVar("expert_axis",
                                                                   default=None)


@contextlib.contextmanager
def experts_sharded_over(axis: str | None) -> Iterator[None]:
  """Traces inside run the MoE layers with their experts sharded over `axis` (None: not
  sharded). Enter it inside the shard_map body, so that every trace sees it."""
  token = _axis.set(axis)
  try:
    yield
  finally:
    _axis.reset(token)


def expert_axis() -> str | None:
  """The mesh axis the routed experts are sharded over in this trace, or None."""
  return _axis.get()


def experts_per_shard(num_experts: int, shards: int) -> int:
  """Experts each of `shards` devices holds: ceil(num_experts / shards)."""
  return -(-num_experts // shards)
