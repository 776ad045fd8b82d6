"""OneRec-V2 lazy-decoder configuration: a frozen, validated dataclass with presets.

Every architecture parameter (docs/architecture.md) lives here; `config.json` beside every
checkpoint is `Config.to_json()` (docs/bring_your_model.md lists the fields).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax.numpy as jnp
from onerec_kernels.topk import ROUTER_SCORES

from onerec_jax.errors import InputError

_DTYPES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32}


class ConfigError(InputError):
  """An invalid configuration; the message names the offending field and value."""


@dataclasses.dataclass(frozen=True)
class Pathway:
  """One context pathway: upstream feature tokens of `width` projected to d_context."""

  name: str
  width: int  # input feature width
  max_len: int  # most tokens this pathway contributes to the context


@dataclasses.dataclass(frozen=True)
class Config:
  """Architecture of a OneRec-V2 lazy decoder (the paper's symbols: docs/architecture.md).

  kv_heads is G_kv, kv_sets is L_kv, kv_split is S_kv (1: V = K; 2: separate V chunk).
  """

  d_model: int
  n_layers: int
  n_heads: int
  d_head: int
  kv_heads: int
  kv_sets: int = 1
  kv_split: int = 1
  pathways: tuple[Pathway, ...] = (
      Pathway("static", 64, 32),
      Pathway("short_term", 64, 128),
      Pathway("long_term", 64, 352),
  )
  d_ff: int = 0  # dense SwiGLU width; 0 means 4 * d_model
  moe_layers: tuple[int, ...] = ()  # indices of decoder layers whose FFN is MoE
  n_routed_experts: int = 0
  n_shared_experts: int = 0
  top_k: int = 0
  expert_d_ff: int = 0
  router_score: str = "sigmoid"
  routed_scaling_factor: float = 1.0
  norm_topk_prob: bool = True
  codebook_sizes: tuple[int, ...] = (8192, 8192, 8192)
  rms_eps: float = 1e-6
  dtype: str = "bfloat16"  # compute dtype
  param_dtype: str = "float32"

  def __post_init__(self):
    # Normalise JSON lists to tuples so equality and hashing work after a round trip.
    object.__setattr__(self, "pathways", tuple(
        p if isinstance(p, Pathway) else Pathway(**p) for p in self.pathways))
    object.__setattr__(self, "moe_layers", tuple(int(i) for i in self.moe_layers))
    object.__setattr__(self, "codebook_sizes", tuple(int(c) for c in self.codebook_sizes))
    if self.d_ff == 0:
      object.__setattr__(self, "d_ff", 4 * self.d_model)
    self._validate()

  def _validate(self):
    def need(ok: bool, field: str, why: str):
      if not ok:
        raise ConfigError(f"Config.{field}={getattr(self, field)!r}: {why}")

    for f in ("d_model", "n_layers", "n_heads", "d_head", "kv_heads", "kv_sets", "d_ff"):
      need(isinstance(getattr(self, f), int) and getattr(self, f) > 0, f,
           "must be a positive integer")
    need(self.n_heads % self.kv_heads == 0, "kv_heads",
         f"must divide n_heads={self.n_heads} (GQA groups query heads evenly)")
    need(self.kv_split in (1, 2), "kv_split", "must be 1 (V = K) or 2 (separate V)")
    need(self.kv_sets <= self.n_layers, "kv_sets", f"exceeds n_layers={self.n_layers}")
    need(len(self.pathways) > 0, "pathways", "needs at least one context pathway")
    names = [p.name for p in self.pathways]
    need(len(set(names)) == len(names), "pathways", "pathway names must be unique")
    for p in self.pathways:
      need(p.width > 0 and p.max_len > 0, "pathways",
           f"pathway {p.name!r} needs positive width and max_len")
    need(all(0 <= i < self.n_layers for i in self.moe_layers), "moe_layers",
         f"indices must lie in [0, {self.n_layers})")
    need(len(set(self.moe_layers)) == len(self.moe_layers), "moe_layers", "has repeats")
    if self.moe_layers:
      need(self.n_routed_experts > 0, "n_routed_experts", "MoE layers need routed experts")
      need(0 < self.top_k <= self.n_routed_experts, "top_k",
           f"must lie in [1, n_routed_experts={self.n_routed_experts}]")
      need(self.expert_d_ff > 0, "expert_d_ff", "MoE layers need an expert width")
      need(self.n_shared_experts >= 0, "n_shared_experts", "must be >= 0")
    need(self.router_score in ROUTER_SCORES, "router_score", f"must be one of {ROUTER_SCORES}")
    need(self.routed_scaling_factor > 0, "routed_scaling_factor", "must be positive")
    need(len(self.codebook_sizes) >= 1 and all(c > 0 for c in self.codebook_sizes),
         "codebook_sizes", "needs at least one level, each codebook non-empty")
    need(self.rms_eps > 0, "rms_eps", "must be positive")
    need(self.dtype in _DTYPES, "dtype", f"must be one of {sorted(_DTYPES)}")
    need(self.param_dtype in _DTYPES, "param_dtype", f"must be one of {sorted(_DTYPES)}")

  # Derived sizes -------------------------------------------------------------------------
  @property
  def levels(self) -> int:
    return len(self.codebook_sizes)

  @property
  def d_context(self) -> int:
    """Width of a pathway projection: S_kv * L_kv * G_kv * d_head."""
    return self.kv_split * self.kv_sets * self.kv_heads * self.d_head

  @property
  def max_context_len(self) -> int:
    return sum(p.max_len for p in self.pathways)

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def params_dtype(self):
    return _DTYPES[self.param_dtype]

  def is_moe(self, layer: int) -> bool:
    return layer in self.moe_layers

  def kv_set_of(self, layer: int) -> int:
    """KV set used by decoder layer `layer`: floor(layer * L_kv / n_layers)."""
    return layer * self.kv_sets // self.n_layers

  def replace(self, **changes: Any) -> "Config":
    return dataclasses.replace(self, **changes)

  # Parameter counts ----------------------------------------------------------------------
  def param_count(self) -> dict[str, int]:
    """Parameters by part, plus 'total' and 'active' (per decoded token)."""
    d, hd = self.d_model, self.n_heads * self.d_head
    context = sum(p.width * self.d_context for p in self.pathways)
    context += self.kv_sets * self.kv_split * self.kv_heads * self.d_head  # K/V norms
    embed = d + self.levels * d + sum(self.codebook_sizes[:-1]) * d
    heads = sum(c * d + d for c in self.codebook_sizes)
    attn = 2 * d * hd + 4 * d * hd + 3 * d  # cross q/o, self qkv/o, three norms
    dense_ffn = 3 * d * self.d_ff
    expert = 3 * d * self.expert_d_ff
    total = active = context + embed + heads
    for layer in range(self.n_layers):
      total += attn
      active += attn
      if self.is_moe(layer):
        router = self.n_routed_experts * (d + 1)
        total += router + (self.n_routed_experts + self.n_shared_experts) * expert
        active += router + (self.top_k + self.n_shared_experts) * expert
      else:
        total += dense_ffn
        active += dense_ffn
    return {"context": context, "embed": embed, "heads": heads, "total": total,
            "active": active}

  # JSON ----------------------------------------------------------------------------------
  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Config":
    if not isinstance(d, dict):
      raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ConfigError(f"config has unknown fields {unknown}; known: {sorted(known)}")
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in d and f.default is dataclasses.MISSING)
    if missing:
      raise ConfigError(f"config is missing required fields {missing}")
    try:
      return cls(**d)
    except (TypeError, ValueError) as e:  # a field of the wrong type or shape
      if isinstance(e, ConfigError):
        raise
      raise ConfigError(f"config: {e}") from None

  @classmethod
  def from_json(cls, text: str) -> "Config":
    try:
      d = json.loads(text)
    except json.JSONDecodeError as e:
      raise ConfigError(f"config is not valid JSON: {e}") from None
    return cls.from_dict(d)


def _dense(d_model: int, n_layers: int, n_heads: int, **kw) -> Config:
  d_head = kw.pop("d_head", d_model // n_heads)
  return Config(d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_head=d_head,
                kv_heads=n_heads, **kw)


def _production_pathways(d_model: int) -> tuple[Pathway, ...]:
  # About 512 context tokens as in the paper's experiments; upstream feature widths are not
  # published, d_model is our stand-in.
  return (Pathway("static", d_model, 32), Pathway("short_term", d_model, 128),
          Pathway("long_term", d_model, 352))


def _preset(d_model, n_layers, n_heads, **kw) -> Config:
  return _dense(d_model, n_layers, n_heads, pathways=_production_pathways(d_model), **kw)


PRESETS: dict[str, Config] = {
    # The paper's Table 5 (docs/architecture.md).
    "0.1b": _preset(640, 12, 10),
    "0.2b": _preset(896, 12, 14),
    "0.5b": _preset(1408, 14, 11),
    "1b": _preset(1792, 18, 14),
    "2b": _preset(2304, 22, 18),
    "4b": _preset(2944, 26, 23),
    "8b": _preset(3584, 34, 28),
    "moe-4b": _preset(1408, 14, 11, moe_layers=tuple(range(2, 14)), n_routed_experts=53,
                      n_shared_experts=1, top_k=3, expert_d_ff=1408),
    # Our own small presets for tests and the demo.
    "tiny": Config(d_model=64, n_layers=2, n_heads=4, d_head=16, kv_heads=2,
                   pathways=(Pathway("static", 16, 4), Pathway("short_term", 24, 8),
                             Pathway("long_term", 24, 12)),
                   codebook_sizes=(16, 16, 16), param_dtype="float16", dtype="float32"),
    "tiny-moe": Config(d_model=64, n_layers=4, n_heads=4, d_head=16, kv_heads=2, kv_sets=2,
                       kv_split=2, pathways=(Pathway("static", 16, 4),
                                             Pathway("short_term", 24, 8),
                                             Pathway("long_term", 24, 12)),
                       moe_layers=(2, 3), n_routed_experts=8, n_shared_experts=1, top_k=2,
                       expert_d_ff=64, codebook_sizes=(16, 16, 16), param_dtype="float16",
                       dtype="float32"),
    "demo": Config(d_model=128, n_layers=4, n_heads=4, d_head=32, kv_heads=2,
                   pathways=(Pathway("static", 16, 4), Pathway("short_term", 32, 16),
                             Pathway("long_term", 32, 44)),
                   moe_layers=(2, 3), n_routed_experts=8, n_shared_experts=1, top_k=2,
                   expert_d_ff=128, codebook_sizes=(64, 64, 64), param_dtype="float16",
                   dtype="float32"),
    # MovieLens-100k (onerec_jax.lab.movielens, whose feature widths these are: a static
    # summary token of 53, history tokens of 62); larger than the demo.
    "movielens": Config(d_model=256, n_layers=4, n_heads=4, d_head=64, kv_heads=2,
                        pathways=(Pathway("static", 53, 1), Pathway("short_term", 62, 16),
                                  Pathway("long_term", 62, 48)),
                        moe_layers=(2, 3), n_routed_experts=8, n_shared_experts=1, top_k=2,
                        expert_d_ff=256, codebook_sizes=(32, 32, 32), param_dtype="float16",
                        dtype="float32"),
}


def preset(name: str) -> Config:
  """Returns the named preset; the error lists the known names."""
  try:
    return PRESETS[name]
  except KeyError:
    raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None


# Sizes the paper names for each preset (parameters), for the size-class check.
PAPER_SIZES: dict[str, float] = {
    "0.1b": 0.1e9, "0.2b": 0.2e9, "0.5b": 0.5e9, "1b": 1e9, "2b": 2e9, "4b": 4e9, "8b": 8e9,
    "moe-4b": 4e9,
}


def size_class_matches(name: str) -> bool:
  """True when the preset's total parameter count rounds to the paper's size class."""
  total = PRESETS[name].param_count()["total"]
  return abs(math.log(total / PAPER_SIZES[name])) < math.log(1.5)
