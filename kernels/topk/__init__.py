"""Top-k entry points for generation and routing; each picks its backend.

impl=None picks "triton" (GPU kernels through jax-triton; see triton_gpu.py) when JAX's
default backend is a GPU, jax_triton imports and the rows are longer than 8192 (shorter
rows take the whole-row path of radix.py, not measured faster than XLA's top_k), else
"reference" (reference.py, the specification), and always "reference" under
ONEREC_KERNELS=reference (onerec_kernels.backend). "radix" runs the GPU algorithm in plain
JAX (radix.py), anywhere.
"""

import functools

import jax
import jax.numpy as jnp

from onerec_kernels import triton_launch
from onerec_kernels.backend import reference_only
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

IMPLS = ("reference", "radix", "triton")
_FLOATS = (jnp.float32, jnp.bfloat16, jnp.float16)


@functools.cache
def _triton():
  """The GPU backend module, or None where triton or jax_triton is missing (the module
  itself imports with triton alone: CPU tests run its kernels in Triton's interpreter)."""
  if not triton_launch.available():
    return None
  from onerec_kernels.topk import triton_gpu
  return triton_gpu


def _pick(impl: str | None, dtype, n: int | None = None) -> str:
  """impl, or the default for rows of n elements (None: router rows, always the kernel)."""
  if impl is None:
    if reference_only():
      return "reference"
    on_gpu = jax.default_backend() == "gpu" and _triton() is not None
    long_rows = n is None or n > radix.DIRECT_SORT
    return "triton" if on_gpu and long_rows and jnp.dtype(dtype) in _FLOATS else "reference"
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r}: must be one of {IMPLS}")
  if impl == "triton" and _triton() is None:
    raise ImportError("impl='triton' needs triton and jax_triton")
  return impl


def top_k(x: jax.Array, k: int, *, impl: str | None = None,
          config: Config | None = None) -> tuple[jax.Array, jax.Array]:
  """Values and indices of the k largest entries of each row of x [..., N], descending,
  ties broken by the lowest index (jax.lax.top_k's contract, which is the reference)."""
  impl = _pick(impl, x.dtype, x.shape[-1])
  if impl == "reference":
    return top_k_reference(x, k)
  n = x.shape[-1]
  if not 0 < k <= n:
    raise ValueError(f"k={k}: must lie in [1, {n}]")
  rows = x.reshape(-1, n)  # [R, N]
  cfg = config or Config.default(n, k)
  ops = radix.JaxOps if impl == "radix" else _triton().TritonOps(cfg)
  values, idx = radix.top_k(rows, k, cfg, ops)
  return values.reshape(*x.shape[:-1], k), idx.reshape(*x.shape[:-1], k)


def beam_topk(logits: jax.Array, beam_scores: jax.Array, k: int,
              valid_mask: jax.Array | None = None, *, impl: str | None = None,
              config: Config | None = None) -> tuple[jax.Array, jax.Array]:
  """One beam-search step: top k of log_softmax(logits) + beam_scores, invalid -inf.

  logits [B, W, V], beam_scores [B, W], valid_mask [B, W, V] bool or None ->
  (scores [B, k] f32, flat index [B, k] into W*V). The GPU kernel never writes the W*V
  scores to memory.
  """
  impl = _pick(impl, logits.dtype, logits.shape[1] * logits.shape[2])
  if impl == "reference":
    return beam_topk_reference(logits, beam_scores, k, valid_mask)
  b, w, v = logits.shape
  cfg = config or Config.default(w * v, k)
  if impl == "radix":
    return radix.top_k(beam_scores_reference(logits, beam_scores, valid_mask), k, cfg)
  return _triton().beam_top_k(logits, beam_scores, k, valid_mask, cfg)


def router_topk(logits: jax.Array, bias: jax.Array | None, k: int,
                score: str = "sigmoid", norm_topk_prob: bool = True,
                scaling: float = 1.0, *, impl: str | None = None
                ) -> tuple[jax.Array, jax.Array]:
  """MoE routing in one kernel on GPU (E <= 256, k <= 16; else the reference by default):
  logits [T, E], bias [E] or None -> (ids [T, k] int32, gates [T, k] f32); see
  router_topk_reference."""
  in_range = logits.shape[-1] <= 256 and k <= 16  # the kernel's design range
  impl = _pick(impl if impl or in_range else "reference", logits.dtype)
  if impl == "reference":
    return router_topk_reference(logits, bias, k, score, norm_topk_prob, scaling)
  if score not in ROUTER_SCORES:
    raise ValueError(f"score={score!r}: must be one of {ROUTER_SCORES}")
  if impl == "triton":
    return _triton().router_top_k(logits, bias, k, score, norm_topk_prob, scaling)
  scores = router_scores_reference(logits, score)  # [T, E]
  ids = radix.top_k_rounds(scores if bias is None else scores + bias.astype(jnp.float32), k)
  return ids, router_gates(scores, ids, norm_topk_prob, scaling)


__all__ = [
    "Config", "IMPLS", "ROUTER_SCORES", "beam_scores_reference", "beam_topk",
    "beam_topk_reference", "router_topk", "router_topk_reference", "top_k",
    "top_k_reference",
]
