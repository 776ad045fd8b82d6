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
from onerec_kernels.quantize import BLOCK, FP8_DTYPE

from onerec_jax.quant.schemes import NONE, SCHEME_NAMES, QuantizationError


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
        raise QuantizationError(f"rule {pattern!r}: unknown scheme {scheme!r}; known: "
                                f"{list(SCHEME_NAMES)}")
      try:
        _regex(pattern)
      except re.error as e:
        raise QuantizationError(f"rule {pattern!r}: invalid regular expression: {e}"
                                ) from None

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
    """Rules from to_json's text; another FP8 format or a malformed file is refused."""
    try:
      d = json.loads(text)
    except json.JSONDecodeError as e:
      raise QuantizationError(f"rules are not valid JSON: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("rules"), list):
      raise QuantizationError('rules JSON needs an object with a "rules" list of '
                              '[pattern, scheme] pairs')
    for key, want in _FORMAT.items():
      if d.get(key, want) != want:
        raise QuantizationError(f"rules were written for {key}={d[key]!r}; this build "
                                f"uses {want!r}")
    if not all(isinstance(r, list) and len(r) == 2 for r in d["rules"]):
      raise QuantizationError(f"rules: every rule is a [pattern, scheme] pair, got "
                              f"{d['rules']!r}")
    return cls(tuple(tuple(r) for r in d["rules"]))
