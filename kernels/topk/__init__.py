"""Top-k entry points for generation and routing, each with its implementations table.

Default order (onerec_kernels.backend): "triton" (GPU kernels through jax-triton; see
triton_gpu.py) where a Hopper GPU and jax_triton are there, the dtype is a float and
k <= TRITON_MAX_K, for rows longer than radix.DIRECT_SORT (shorter rows take the whole-row
path of radix.py, not measured faster than XLA's top_k); else "reference" (reference.py,
the specification). "radix" runs the GPU algorithm in plain JAX
(radix.py), anywhere, when asked for by name. Every implementation takes k in [1, n].
"""

import functools

import jax
import jax.numpy as jnp

from onerec_kernels import backend
from onerec_kernels.topk import radix
from onerec_kernels.topk.radix import Config
from onerec_kernels.topk.reference import (
    ROUTER_SCORES,
    beam_scores_reference,
    beam_topk_reference,
    router_gates,
    router_scores_reference,
    router_topk_reference,
    top_k_reference,
)

_FLOATS = (jnp.float32, jnp.bfloat16, jnp.float16)
TRITON_MAX_K = 8192  # the GPU kernels' candidate capacity: the largest k they select
ROUTER_MAX_EXPERTS, ROUTER_MAX_K = 256, 16  # the router kernel's design range


@functools.cache
def _triton():
  """The GPU backend module (it imports with triton alone: CPU tests run its kernels in
  Triton's interpreter)."""
  from onerec_kernels.topk import triton_gpu
  return triton_gpu


def _check_k(k: int, n: int) -> None:
  if not isinstance(k, int) or not 0 < k <= n:
    raise ValueError(f"k={k!r}: must be an integer in [1, {n}]")


def _require_triton_rows(what: str, dtype, k: int) -> None:
  """Unsupported unless the Triton kernels serve rows of dtype and this k."""
  backend.require_triton_gpu(what)
  if jnp.dtype(dtype) not in _FLOATS:
    raise backend.Unsupported(f"{what} takes float32, bfloat16 or float16, not {dtype}")
  if k > TRITON_MAX_K:
    raise backend.Unsupported(f"{what}: k={k} exceeds the kernels' {TRITON_MAX_K}")


def _long_rows(n: int) -> bool:
  """Rows up to radix.DIRECT_SORT are sorted whole by the kernels: no faster than XLA's
  top_k, so the default order keeps the reference there."""
  return n > radix.DIRECT_SORT


def _top_k_radix(x, k, *, config=None, ops=radix.JaxOps):
  n = x.shape[-1]
  rows = x.reshape(-1, n)  # [R, N]
  values, idx = radix.top_k(rows, k, config or Config.default(n, k), ops)
  return values.reshape(*x.shape[:-1], k), idx.reshape(*x.shape[:-1], k)


def _top_k_triton(x, k, *, config=None):
  _require_triton_rows("the Triton top_k", x.dtype, k)
  cfg = config or Config.default(x.shape[-1], k)
  return _top_k_radix(x, k, config=cfg, ops=_triton().TritonOps(cfg))


def _top_k_reference(x, k, *, config=None):
  del config  # a tuning of the radix algorithm
  return top_k_reference(x, k)


TOP_K = backend.Implementations("top_k", {
    "triton": _top_k_triton, "radix": _top_k_radix, "reference": _top_k_reference,
}, explicit=("radix",), prefer={"triton": lambda x, k, **_: _long_rows(x.shape[-1])})


def top_k(x: jax.Array, k: int, *, impl: str | None = None,
          config: Config | None = None) -> tuple[jax.Array, jax.Array]:
  """Values and indices of the k largest entries of each row of x [..., N], descending,
  ties broken by the lowest index (jax.lax.top_k's contract, which is the reference)."""
  _check_k(k, x.shape[-1])
  return TOP_K(impl, x, k, config=config)


def _beam_radix(logits, beam_scores, k, valid_mask, *, config=None):
  b, w, v = logits.shape
  return radix.top_k(beam_scores_reference(logits, beam_scores, valid_mask), k,
                     config or Config.default(w * v, k))


def _beam_triton(logits, beam_scores, k, valid_mask, *, config=None):
  b, w, v = logits.shape
  _require_triton_rows("the Triton beam_topk", logits.dtype, k)
  return _triton().beam_top_k(logits, beam_scores, k, valid_mask,
                              config or Config.default(w * v, k))


def _beam_reference(logits, beam_scores, k, valid_mask, *, config=None):
  del config
  return beam_topk_reference(logits, beam_scores, k, valid_mask)


BEAM_TOPK = backend.Implementations("beam_topk", {
    "triton": _beam_triton, "radix": _beam_radix, "reference": _beam_reference,
}, explicit=("radix",), prefer={
    "triton": lambda logits, *_, **__: _long_rows(logits.shape[1] * logits.shape[2])})


def beam_topk(logits: jax.Array, beam_scores: jax.Array, k: int,
              valid_mask: jax.Array | None = None, *, impl: str | None = None,
              config: Config | None = None) -> tuple[jax.Array, jax.Array]:
  """One beam-search step: top k of log_softmax(logits) + beam_scores, invalid -inf.

  logits [B, W, V], beam_scores [B, W], valid_mask [B, W, V] bool or None ->
  (scores [B, k] f32, flat index [B, k] into W*V). The GPU kernel never writes the W*V
  scores to memory.
  """
  _check_k(k, logits.shape[1] * logits.shape[2])
  return BEAM_TOPK(impl, logits, beam_scores, k, valid_mask, config=config)


def _router_triton(logits, bias, k, score, norm_topk_prob, scaling):
  backend.require_triton_gpu("the Triton router")
  e = logits.shape[-1]
  if e > ROUTER_MAX_EXPERTS or k > ROUTER_MAX_K:
    raise backend.Unsupported(f"the Triton router takes E <= {ROUTER_MAX_EXPERTS} and "
                              f"k <= {ROUTER_MAX_K}, got E={e}, k={k}")
  return _triton().router_top_k(logits, bias, k, score, norm_topk_prob, scaling)


def _router_radix(logits, bias, k, score, norm_topk_prob, scaling):
  scores = router_scores_reference(logits, score)  # [T, E]
  ids = radix.top_k_rounds(scores if bias is None else scores + bias.astype(jnp.float32), k)
  return ids, router_gates(scores, ids, norm_topk_prob, scaling)


ROUTER_TOPK = backend.Implementations("router_topk", {
    "triton": _router_triton, "radix": _router_radix, "reference": router_topk_reference,
}, explicit=("radix",))


def router_topk(logits: jax.Array, bias: jax.Array | None, k: int,
                score: str = "sigmoid", norm_topk_prob: bool = True,
                scaling: float = 1.0, *, impl: str | None = None
                ) -> tuple[jax.Array, jax.Array]:
  """MoE routing in one kernel on GPU: logits [T, E], bias [E] or None -> (ids [T, k]
  int32, gates [T, k] f32); see router_topk_reference."""
  if score not in ROUTER_SCORES:
    raise ValueError(f"score={score!r}: must be one of {ROUTER_SCORES}")
  _check_k(k, logits.shape[-1])
  return ROUTER_TOPK(impl, logits, bias, k, score, norm_topk_prob, scaling)


__all__ = [
    "BEAM_TOPK", "Config", "ROUTER_SCORES", "ROUTER_TOPK", "TOP_K", "TRITON_MAX_K",
    "beam_scores_reference", "beam_topk", "beam_topk_reference", "router_topk",
    "router_topk_reference", "top_k", "top_k_reference",
]
