"""Offline post-training quantization of a parameter tree."""

from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from onerec_jax.quant.rules import Rules
from onerec_jax.quant.schemes import NONE, QArray, QuantizationError, quantize_weight

WEIGHT = "weight"  # the parameter holding a matmul module's matrix (Linear, GroupedLinear)


def quantize_params(params: Any, rules: Rules) -> dict[str, Any]:
  """Returns params with every weight its rules quantize replaced by a QArray.

  params is the "params" collection (nested dicts); the module path of a weight is the
  "/"-joined key path above its "weight" leaf. Raises QuantizationError naming every rule
  that is the first match of no weight and every weight whose shape does not fit its
  scheme. Pure jax.numpy, so it also runs on abstract params under jax.eval_shape.
  """
  flat = traverse_util.flatten_dict(params)
  used = set()
  problems = []
  out = {}
  for key, leaf in flat.items():
    out[key] = leaf
    if key[-1] != WEIGHT:
      continue
    path = "/".join(key[:-1])
    i = rules.match(path)
    if i is None:
      continue
    used.add(i)
    pattern, scheme = rules.rules[i]
    if scheme == NONE:
      continue
    if isinstance(leaf, QArray):
      problems.append(f"{path}: weight is already quantized")
      continue
    try:
      out[key] = quantize_weight(leaf, scheme)
    except ValueError as e:
      problems.append(f"{path} (rule {pattern!r}): {e}")
  problems += [f"rule {p!r} -> {s!r} matches no weight (or only weights an earlier rule "
               f"claims)" for i, (p, s) in enumerate(rules.rules) if i not in used]
  if problems:
    raise QuantizationError("quantize_params: " + "; ".join(problems))
  return traverse_util.unflatten_dict(out)


def _bits(dtype) -> int:
  dtype = jnp.dtype(dtype)
  return (jnp.iinfo(dtype) if jnp.issubdtype(dtype, jnp.integer) else jnp.finfo(dtype)).bits


def weight_bytes(params: Any) -> int:
  """Bytes of a parameter tree as stored (4-bit weights packed two to a byte, as the
  kernels read them), QArray scales included; works on abstract trees."""
  return sum(leaf.size * _bits(leaf.dtype) for leaf in jax.tree.leaves(params)) // 8
