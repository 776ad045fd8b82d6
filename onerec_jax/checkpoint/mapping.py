"""The declarative name map between the PyTorch state_dict (checkpoints/README.md) and the
JAX parameter tree.

Each row maps one JAX parameter to the PyTorch tensors it is made of: fused projections
concatenate their parts along the output axis (q/k/v -> qkv_proj, gate/up -> gate_up_proj)
and routed experts stack over {e}. Templates expand over {i} (decoder layer), {j} (level),
{s} (KV set), {p} (pathway) and {e} (expert). Every conversion is exact: concatenation and
stacking only, so the inverse (export) gives the same bits back.
"""

import dataclasses
from typing import Callable

from onerec_jax.config import Config


@dataclasses.dataclass(frozen=True)
class Row:
  """Template row: JAX path, the PyTorch parts concatenated along axis 0, and the layers or
  indices it applies to."""

  jax: str  # "/"-joined path in the params tree
  torch: tuple[str, ...]  # parts, concatenated along axis 0 in this order
  where: str = "all"  # "all", "dense" or "moe" layers; "kv_split2"; see _WHERE
  stack_experts: bool = False  # stack the parts over {e} into [E, ...]


_LAYER = "layers.{i}."
TABLE: tuple[Row, ...] = (
    Row("context/pathway_{p}/weight", ("context.pathways.{p}.weight",)),
    Row("context/k_norm_{s}/weight", ("context.k_norms.{s}.weight",)),
    Row("context/v_norm_{s}/weight", ("context.v_norms.{s}.weight",), where="kv_split2"),
    Row("embed/bos", ("embed.bos",)),
    Row("embed/level_{j}", ("embed.levels.{j}.weight",), where="input_levels"),
    Row("embed/position", ("embed.positions.weight",)),
    Row("layer_{i}/cross_attn_norm/weight", (_LAYER + "cross_attn_norm.weight",)),
    Row("layer_{i}/cross_attn/q_proj/weight", (_LAYER + "cross_attn.q_proj.weight",)),
    Row("layer_{i}/cross_attn/o_proj/weight", (_LAYER + "cross_attn.o_proj.weight",)),
    Row("layer_{i}/self_attn_norm/weight", (_LAYER + "self_attn_norm.weight",)),
    Row("layer_{i}/self_attn/qkv_proj/weight",
        tuple(_LAYER + f"self_attn.{x}_proj.weight" for x in "qkv")),
    Row("layer_{i}/self_attn/o_proj/weight", (_LAYER + "self_attn.o_proj.weight",)),
    Row("layer_{i}/mlp_norm/weight", (_LAYER + "mlp_norm.weight",)),
    Row("layer_{i}/mlp/gate_up_proj/weight",
        (_LAYER + "mlp.gate_proj.weight", _LAYER + "mlp.up_proj.weight"), where="dense"),
    Row("layer_{i}/mlp/down_proj/weight", (_LAYER + "mlp.down_proj.weight",), where="dense"),
    Row("layer_{i}/mlp/router/weight", (_LAYER + "mlp.gate.weight",), where="moe"),
    Row("layer_{i}/mlp/router/score_bias", (_LAYER + "mlp.gate.e_score_correction_bias",),
        where="moe"),
    Row("layer_{i}/mlp/experts/gate_up_proj/weight",
        (_LAYER + "mlp.experts.{e}.gate_proj.weight", _LAYER + "mlp.experts.{e}.up_proj.weight"),
        where="moe", stack_experts=True),
    Row("layer_{i}/mlp/experts/down_proj/weight", (_LAYER + "mlp.experts.{e}.down_proj.weight",),
        where="moe", stack_experts=True),
    Row("layer_{i}/mlp/shared_experts/gate_up_proj/weight",
        (_LAYER + "mlp.shared_experts.gate_proj.weight",
         _LAYER + "mlp.shared_experts.up_proj.weight"), where="moe_shared"),
    Row("layer_{i}/mlp/shared_experts/down_proj/weight",
        (_LAYER + "mlp.shared_experts.down_proj.weight",), where="moe_shared"),
    Row("head_{j}_norm/weight", ("heads.{j}.norm.weight",)),
    Row("head_{j}_proj/weight", ("heads.{j}.proj.weight",)),
)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One concrete JAX parameter and its PyTorch sources.

  sources[e][c]: part c of expert e (one outer item when not stacked over experts).
  """

  jax: str
  sources: tuple[tuple[str, ...], ...]
  stacked: bool

  @property
  def torch_names(self) -> tuple[str, ...]:
    return tuple(name for group in self.sources for name in group)


def _layers(cfg: Config, pred: Callable[[int], bool]) -> list[dict[str, int]]:
  return [{"i": i} for i in range(cfg.n_layers) if pred(i)]


def _bindings(row: Row, cfg: Config) -> list[dict]:
  """Every assignment of the row's placeholders that the config has."""
  if "{i}" in row.jax:
    pred = {"all": lambda i: True, "dense": lambda i: not cfg.is_moe(i),
            "moe": cfg.is_moe, "moe_shared": lambda i: cfg.is_moe(i) and cfg.n_shared_experts > 0
            }[row.where]
    return _layers(cfg, pred)
  if "{p}" in row.jax:
    return [{"p": p.name} for p in cfg.pathways]
  if "{s}" in row.jax:
    if row.where == "kv_split2" and cfg.kv_split != 2:
      return []
    return [{"s": s} for s in range(cfg.kv_sets)]
  if "{j}" in row.jax:
    n = cfg.levels - 1 if row.where == "input_levels" else cfg.levels
    return [{"j": j} for j in range(n)]
  return [{}]


def entries(cfg: Config) -> list[Entry]:
  """The table expanded for one config, in table order."""
  out = []
  for row in TABLE:
    for b in _bindings(row, cfg):
      if row.stack_experts:
        sources = tuple(tuple(t.format(e=e, **b) for t in row.torch)
                        for e in range(cfg.n_routed_experts))
      else:
        sources = (tuple(t.format(**b) for t in row.torch),)
      out.append(Entry(row.jax.format(**b), sources, row.stack_experts))
  return out
