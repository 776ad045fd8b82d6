"""Quantization rules: an ordered tuple of (module-path regex, scheme), first match wins.

Paths are "/"-joined module paths such as "layer_2/mlp/experts/gate_up_proj"; a pattern
must match the whole path (re.fullmatch). A module no rule matches is not quantized, as is
one whose first matching rule says "none".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re

import jax.numpy as jnp
from onerec_kernels.quantize import FP8_DTYPE

from onerec_jax.config import Config
from onerec_jax.quant.schemes import BLOCK, NONE, SCHEME_NAMES


@functools.lru_cache(maxsize=None)
def _regex(pattern: str) -> re.Pattern:
  return re.compile(pattern)


# Recorded beside the rules so that a checkpoint made under another FP8 format is refused.
_FORMAT = {"fp8_dtype": jnp.dtype(FP8_DTYPE).name, "block": BLOCK}


@dataclasses.dataclass(frozen=True)
class Rules:
  """Ordered (pattern, scheme) pairs; frozen and hashable, so usable as a jit static arg."""

  rules: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    rules = tuple((str(p), str(s)) for p, s in self.rules)  # lists from JSON -> tuples
    object.__setattr__(self, "rules", rules)
    for pattern, scheme in rules:
      if scheme not in SCHEME_NAMES:
        raise ValueError(f"rule {pattern!r}: unknown scheme {scheme!r}; known: "
                         f"{list(SCHEME_NAMES)}")
      try:
        _regex(pattern)
      except re.error as e:
        raise ValueError(f"rule {pattern!r}: invalid regular expression: {e}") from None

  def match(self, path: str) -> int | None:
    """Index of the first rule whose pattern matches the whole path, else None."""
    for i, (pattern, _) in enumerate(self.rules):
      if _regex(pattern).fullmatch(path):
        return i
    return None

  def scheme(self, path: str) -> str:
    """The scheme of the module at `path` ("none" when no rule matches)."""
    i = self.match(path)
    return NONE if i is None else self.rules[i][1]

  def to_json(self) -> str:
    return json.dumps({**_FORMAT, "rules": [list(r) for r in self.rules]}, indent=2)

  @classmethod
  def from_json(cls, text: str) -> Rules:
    d = json.loads(text)
    for key, want in _FORMAT.items():
      if d.get(key, want) != want:
        raise ValueError(f"rules were written for {key}={d[key]!r}; this build uses "
                         f"{want!r}")
    return cls(tuple(d["rules"]))


def default_rules(config: Config) -> Rules:
  """The paper's set: self-attention qkv/o, cross-attention q/o, dense FFN and shared
  experts per channel; routed experts in 128x128 blocks; the rest unquantized. Rules for
  parts the config does not have (dense FFN, experts, shared experts) are left out, so
  that every rule matches some weight."""
  layers = range(config.n_layers)
  dense = [i for i in layers if not config.is_moe(i)]
  ffn = "(gate_up_proj|down_proj)"
  rules = [(r"layer_\d+/self_attn/(qkv_proj|o_proj)", "per_channel"),
           (r"layer_\d+/cross_attn/(q_proj|o_proj)", "per_channel")]
  if dense:
    rules.append((rf"layer_\d+/mlp/{ffn}", "per_channel"))
  if config.moe_layers and config.n_shared_experts:
    rules.append((rf"layer_\d+/mlp/shared_experts/{ffn}", "per_channel"))
  if config.moe_layers:
    rules.append((rf"layer_\d+/mlp/experts/{ffn}", "block"))
  return Rules(tuple(rules))
