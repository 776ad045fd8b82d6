"""The OneRec-V2 lazy decoder (docs/architecture.md) in Flax linen.

Shapes: B requests, W beams per request, T decoder positions in a call, N context tokens,
H query heads, G = kv_heads, dh = d_head, D = d_model. The decoder works on hidden states
[B, W, T, D] so that the W beams of a request share that request's context K/V
[B, N, G, dh]: cross-attention of a request is one attention of W*T*H query rows against
its N context rows, never a W-fold copy of K/V.
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import onerec_kernels.grouped_gemm as grouped_gemm_op
import onerec_kernels.topk as topk_op

from onerec_jax.config import Config
from onerec_jax.model.layers import GroupedLinear, Linear, RMSNorm, SwiGLU, swiglu
from onerec_kernels.quantize import RMSNormOf, RowsOf, SwiGLUOf

# Context: {"kv": ((k, v) per KV set, each [B, N, G, dh]), "mask": [B, N] bool}.
Context = dict[str, Any]
# KV cache of the decoder's self-attention: per layer {"k", "v": [B, W, levels, H, dh]}.
Cache = tuple[dict[str, jax.Array], ...]

_NEG = jnp.finfo(jnp.float32).min  # masked attention score (finite: no NaN on empty rows)


def _kw(cfg: Config) -> dict[str, Any]:
  return dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Grouped-query attention; softmax in FP32.

  q: [B, Q, G, R, dh] (R = H / G), k, v: [B, S, G, dh], mask: broadcastable to
  [B, G, R, Q, S] -> [B, Q, G, R, dh].
  """
  scale = q.shape[-1] ** -0.5
  s = jnp.einsum("bqgrd,bsgd->bgrqs", q, k, preferred_element_type=jnp.float32) * scale
  p = jax.nn.softmax(jnp.where(mask, s, _NEG), axis=-1)
  return jnp.einsum("bgrqs,bsgd->bqgrd", p.astype(v.dtype), v,
                    preferred_element_type=jnp.float32).astype(q.dtype)


class ContextProcessor(nn.Module):
  """Pathway projections, concatenation along the sequence, chunking into K/V sets."""

  config: Config

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array],
               mask: Mapping[str, jax.Array] | None = None) -> Context:
    cfg = self.config
    parts, masks = [], []
    for p in cfg.pathways:
      x = features[p.name]  # [B, n_p, width_p]
      parts.append(Linear(cfg.d_context, name=f"pathway_{p.name}", **_kw(cfg))(x))
      m = None if mask is None else mask.get(p.name)
      masks.append(jnp.ones(x.shape[:2], bool) if m is None else m.astype(bool))
    c = jnp.concatenate(parts, axis=1)  # [B, N, d_context]
    b, n, _ = c.shape
    width = cfg.kv_heads * cfg.d_head
    chunks = c.reshape(b, n, cfg.kv_split * cfg.kv_sets, width)
    kv = []
    for s in range(cfg.kv_sets):
      k = RMSNorm(cfg.rms_eps, name=f"k_norm_{s}", **_kw(cfg))(chunks[:, :, s * cfg.kv_split])
      k = k.reshape(b, n, cfg.kv_heads, cfg.d_head)
      if cfg.kv_split == 2:
        v = RMSNorm(cfg.rms_eps, name=f"v_norm_{s}", **_kw(cfg))(
            chunks[:, :, s * cfg.kv_split + 1]).reshape(b, n, cfg.kv_heads, cfg.d_head)
      else:
        v = k
      kv.append((k, v))
    return {"kv": tuple(kv), "mask": jnp.concatenate(masks, axis=1)}


class CrossAttention(nn.Module):
  """Lazy cross-attention: only W_q and W_o; K/V come from the context processor."""

  config: Config

  @nn.compact
  def __call__(self, h: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
               producer: RMSNormOf | None = None):
    cfg = self.config
    b, w, t, _ = h.shape  # [B, W, T, D]
    g, r = cfg.kv_heads, cfg.n_heads // cfg.kv_heads
    q = Linear(cfg.n_heads * cfg.d_head, name="q_proj", **_kw(cfg))(h, producer=producer)
    q = q.reshape(b, w * t, g, r, cfg.d_head)
    o = _attend(q, k, v, mask[:, None, None, None, :])  # [B, W*T, G, R, dh]
    o = o.reshape(b, w, t, cfg.n_heads * cfg.d_head)
    return Linear(cfg.d_model, name="o_proj", **_kw(cfg))(o)


class SelfAttention(nn.Module):
  """Causal self-attention over the decoder positions, with an optional KV cache."""

  config: Config

  @nn.compact
  def __call__(self, h: jax.Array, start: int, cache: dict[str, jax.Array] | None,
               producer: RMSNormOf | None = None):
    cfg = self.config
    b, w, t, _ = h.shape  # [B, W, T, D]
    hd = cfg.n_heads * cfg.d_head
    qkv = Linear(3 * hd, name="qkv_proj", **_kw(cfg))(h, producer=producer)
    q, k, v = (a.reshape(b, w, t, cfg.n_heads, cfg.d_head) for a in jnp.split(qkv, 3, -1))
    if cache is not None:  # write positions [start, start + t) and read all of them
      k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype),
                                              start, axis=2)
      v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype),
                                              start, axis=2)
      cache = {"k": k, "v": v}
    s_len = k.shape[2]
    q_pos = start + jnp.arange(t)
    causal = q_pos[:, None] >= jnp.arange(s_len)[None, :]  # [T, S]
    # Fold beams into the batch; every head is its own group (R = 1).
    fold = lambda a: a.reshape(b * w, a.shape[2], cfg.n_heads, 1, cfg.d_head)
    o = _attend(fold(q), fold(k)[:, :, :, 0], fold(v)[:, :, :, 0], causal)
    o = o.reshape(b, w, t, hd)
    return Linear(cfg.d_model, name="o_proj", **_kw(cfg))(o), cache


class Router(nn.Module):
  """DeepSeek-V3 style router: FP32 logits, then onerec_kernels.topk.router_topk (scores,
  bias-corrected top-k selection, normalised and scaled gates).

  Returns (expert ids [T, k] int32, gates [T, k] f32).
  """

  config: Config

  @nn.compact
  def __call__(self, x: jax.Array):  # [T, D]
    cfg = self.config
    e = cfg.n_routed_experts
    w = self.param("weight", nn.initializers.normal(0.02), (e, x.shape[-1]), cfg.params_dtype)
    bias = self.param("score_bias", nn.initializers.zeros, (e,), cfg.params_dtype)
    logits = jnp.einsum("td,ed->te", x.astype(jnp.float32), w.astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST)
    ids, gates = topk_op.router_topk(logits, bias.astype(jnp.float32), cfg.top_k,
                                     cfg.router_score, cfg.norm_topk_prob,
                                     cfg.routed_scaling_factor)
    self.sow("intermediates", "expert_ids", ids)  # for tests and routing statistics
    return ids, gates


class RoutedExperts(nn.Module):
  """SwiGLU experts over tokens sorted by expert: one grouped GEMM for gate/up, one for
  down, then the gate-weighted combine."""

  config: Config

  @nn.compact
  def __call__(self, x: jax.Array, ids: jax.Array, gates: jax.Array) -> jax.Array:
    cfg = self.config
    e = cfg.n_routed_experts
    order, group_sizes = grouped_gemm_op.sort_by_expert(ids, e)
    gather = RowsOf(x, order // cfg.top_k)  # [T*k, D], sorted by expert
    h = GroupedLinear(e, 2 * cfg.expert_d_ff, name="gate_up_proj", **_kw(cfg))(
        x[gather.rows], group_sizes, producer=gather)
    y = GroupedLinear(e, cfg.d_model, name="down_proj", **_kw(cfg))(
        swiglu(h), group_sizes, producer=SwiGLUOf(h))
    return grouped_gemm_op.combine(y, order, gates).astype(cfg.compute_dtype)


class MoE(nn.Module):
  """Routed experts plus the shared expert(s), which run on every token."""

  config: Config

  @nn.compact
  def __call__(self, x: jax.Array, producer: RMSNormOf | None = None) -> jax.Array:
    cfg = self.config
    flat = lambda a: a.reshape(-1, a.shape[-1])
    xt = flat(x)  # [T, D]
    ids, gates = Router(cfg, name="router")(xt)
    y = RoutedExperts(cfg, name="experts")(xt, ids, gates)
    if cfg.n_shared_experts:
      y = y + SwiGLU(cfg.d_model, cfg.n_shared_experts * cfg.expert_d_ff,
                     name="shared_experts", **_kw(cfg))(
                         xt, producer=producer and dataclasses.replace(producer, x=flat(producer.x)))
    return y.reshape(x.shape)


class DecoderBlock(nn.Module):
  """Pre-norm: cross-attention, causal self-attention, FFN (dense SwiGLU or MoE)."""

  config: Config
  layer: int

  @nn.compact
  def __call__(self, h, context: Context, start: int, cache):
    cfg = self.config

    def norm(name: str, x: jax.Array) -> tuple[jax.Array, RMSNormOf]:
      """RMSNorm(x) and its producer, for the FP8 quantization of the matmul it feeds."""
      module = RMSNorm(cfg.rms_eps, name=name, **_kw(cfg))
      return module(x), module.producer(x)

    k, v = context["kv"][cfg.kv_set_of(self.layer)]
    x, producer = norm("cross_attn_norm", h)
    h = h + CrossAttention(cfg, name="cross_attn")(x, k, v, context["mask"], producer)
    x, producer = norm("self_attn_norm", h)
    a, cache = SelfAttention(cfg, name="self_attn")(x, start, cache, producer)
    h = h + a
    x, producer = norm("mlp_norm", h)
    if cfg.is_moe(self.layer):
      h = h + MoE(cfg, name="mlp")(x, producer=producer)
    else:
      h = h + SwiGLU(cfg.d_model, cfg.d_ff, name="mlp", **_kw(cfg))(x, producer=producer)
    return h, cache


class DecoderEmbed(nn.Module):
  """Decoder inputs: BOS at position 0, level j-1's codebook at position j, plus a learned
  embedding per decoder position."""

  config: Config

  @nn.compact
  def __call__(self, ids: jax.Array, start: int) -> jax.Array:
    """ids: [B, W, T] codes for positions start .. start+T-1 (ignored at position 0)."""
    cfg = self.config
    d = cfg.d_model
    init = nn.initializers.normal(1.0)
    bos = self.param("bos", init, (d,), cfg.params_dtype)
    tables = [self.param(f"level_{j}", init, (c, d), cfg.params_dtype)
              for j, c in enumerate(cfg.codebook_sizes[:-1])]
    position = self.param("position", init, (cfg.levels, d), cfg.params_dtype)
    cols = []
    for t in range(ids.shape[-1]):
      p = start + t
      if p == 0:
        x = jnp.broadcast_to(bos, ids.shape[:-1] + (d,))
      else:
        x = jnp.take(tables[p - 1], ids[..., t], axis=0)
      cols.append(x + position[p])
    return jnp.stack(cols, axis=-2).astype(cfg.compute_dtype)  # [B, W, T, D]


class OneRecV2(nn.Module):
  """The lazy decoder. Methods: encode (context K/V), decode (positions, with an optional
  KV cache), head (per-level logits) and __call__ (teacher-forced logits of all levels)."""

  config: Config

  def setup(self):
    cfg = self.config
    self.context = ContextProcessor(cfg)
    self.embed = DecoderEmbed(cfg)
    self.layers = [DecoderBlock(cfg, i, name=f"layer_{i}") for i in range(cfg.n_layers)]
    self.heads = [(RMSNorm(cfg.rms_eps, name=f"head_{j}_norm", **_kw(cfg)),
                   Linear(c, name=f"head_{j}_proj", **_kw(cfg)))
                  for j, c in enumerate(cfg.codebook_sizes)]

  def encode(self, features: Mapping[str, jax.Array],
             mask: Mapping[str, jax.Array] | None = None) -> Context:
    """Context K/V for each KV set: features[name] [B, n, width] per pathway."""
    return self.context(features, mask)

  def decode(self, context: Context, ids: jax.Array, start: int = 0,
             cache: Cache | None = None) -> tuple[jax.Array, Cache | None]:
    """Runs decoder positions start .. start+T-1 for ids [B, W, T]; returns the final hidden
    states [B, W, T, D] and the updated cache (None without one)."""
    h = self.embed(ids, start)
    new_cache = []
    for i, layer in enumerate(self.layers):
      h, c = layer(h, context, start, None if cache is None else cache[i])
      new_cache.append(c)
    return h, (None if cache is None else tuple(new_cache))

  def head(self, h: jax.Array, level: int) -> jax.Array:
    """Level `level`'s logits in FP32: [..., D] -> [..., codebook_sizes[level]]."""
    norm, proj = self.heads[level]
    return proj(norm(h)).astype(jnp.float32)

  def __call__(self, features: Mapping[str, jax.Array], ids: jax.Array,
               mask: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, ...]:
    """Teacher-forced logits: ids [B, levels] (the item's codes; the last one is never an
    input) -> one [B, codebook_sizes[j]] array per level."""
    context = self.encode(features, mask)
    b = ids.shape[0]
    inputs = jnp.concatenate([jnp.zeros((b, 1), ids.dtype), ids[:, :-1]], axis=1)
    h, _ = self.decode(context, inputs[:, None, :], 0, None)  # [B, 1, levels, D]
    return tuple(self.head(h[:, 0, j], j) for j in range(self.config.levels))


def init_cache(config: Config, batch: int, beams: int, dtype=None) -> Cache:
  """Empty self-attention KV cache for all decoder positions: [B, W, levels, H, dh]."""
  shape = (batch, beams, config.levels, config.n_heads, config.d_head)
  dtype = dtype or config.compute_dtype
  return tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
               for _ in range(config.n_layers))


def init_params(config: Config, rng: jax.Array, batch: int = 1) -> dict[str, Any]:
  """Random parameters (fan-in scaled) in config.param_dtype."""
  features = {p.name: jnp.zeros((batch, 1, p.width), config.compute_dtype)
              for p in config.pathways}
  ids = jnp.zeros((batch, config.levels), jnp.int32)
  return OneRecV2(config).init(rng, features, ids)["params"]
