"""A Qwen3 (and Qwen3-MoE) decoder in Flax linen, serving semantic IDs as tokens
(docs/qwen3.md), behind the decode interface the beam search calls (as OneRecV2):

- encode(features, mask): the prompt (features["prompt"] [B, P] token ids, mask [B, P])
  prefilled once per request, its real tokens moved first (in their order): its K/V
  [B, P, G, dh] per layer (after the per-head k norm and the rotary embedding), its
  real tokens' count ("lengths", which the attention takes as key counts) and the hidden
  state of its last real token, which gives the level-0 logits;
- decode(context, ids, past): without a Past, that last hidden state (decoding position
  0 is the prefill's); with one, the tokens of the codes ids [B, W, T] of levels
  past.positions ... at rotary positions prompt length + level, attending the prompt's
  K/V (shared by the W beams of a request: the beam-shared attention kernel, merged by
  log-sum-exp) and the decoded positions of past;
- head(h, level): final norm, then logits over that level's token range only.

Every weight product goes through Linear / GroupedLinear (the MoE block is OneRec's, with
a softmax router and no shared expert), so the FP8 rules and kernels apply unchanged.
Shapes: B requests, W beams, T positions in a call, P prompt tokens, H query heads,
G = kv_heads, R = H / G, dh = d_head, D = d_model, V = vocab_size.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import onerec_kernels.attention as attention_op

from onerec_jax.config import PROMPT, Qwen3Config
from onerec_jax.model.layers import (Linear, RMSNorm, SwiGLU, attend_decoded, matmul_precision,
                                     valid_first)
from onerec_jax.model.onerec import MoE, Past, extend
from onerec_kernels.quantize import RMSNormOf


def _kw(cfg: Qwen3Config) -> dict[str, Any]:
  return dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """The rotary embedding (Hugging Face's rotate_half layout, angles in FP32): x [..., T,
  heads, dh], positions [..., T] int."""
  dh = x.shape[-1]
  inv_freq = 1.0 / theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh)  # [dh / 2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [..., T, dh / 2]
  angles = jnp.concatenate([angles, angles], axis=-1)[..., None, :]  # [..., T, 1, dh]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  half = dh // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


class Attention(nn.Module):
  """Qwen3 attention: fused q/k/v projection, per-head RMSNorm of q and k, the rotary
  embedding, GQA, o projection."""

  config: Qwen3Config

  def _qkv(self, x, positions, producer):
    cfg = self.config
    h, g, dh = cfg.n_heads, cfg.kv_heads, cfg.d_head
    qkv = Linear((h + 2 * g) * dh, name="qkv_proj", **_kw(cfg))(x, producer=producer)
    q, k, v = jnp.split(qkv, [h * dh, (h + g) * dh], axis=-1)
    norm = lambda name, a, heads: RMSNorm(cfg.rms_eps, name=name, **_kw(cfg))(
        a.reshape(*a.shape[:-1], heads, dh))
    q = rotary(norm("q_norm", q, h), positions, cfg.rope_theta)  # [..., T, H, dh]
    k = rotary(norm("k_norm", k, g), positions, cfg.rope_theta)  # [..., T, G, dh]
    return q, k, v.reshape(*v.shape[:-1], g, dh)

  def _out(self, o):
    cfg = self.config
    return Linear(cfg.d_model, name="o_proj", **_kw(cfg))(
        o.reshape(*o.shape[:-3], cfg.n_heads * cfg.d_head))

  @nn.compact
  def __call__(self, x, positions, length=None, prompt=None, past=(), rows=None,
               producer: RMSNormOf | None = None):
    """Prefill (prompt None): x [B, P, D], causal over the prompt's first length [B]
    tokens; -> (out, (k, v) [B, P, G, dh]). Decode: x [B, W, T, D] after the prompt's K/V
    prompt = (k, v, length) and the decoded positions past (each [B, W_p, G, dh], read
    through rows [B, W, P']); -> (out, (k, v) [B, W, T, G, dh])."""
    cfg = self.config
    g, r, dh = cfg.kv_heads, cfg.n_heads // cfg.kv_heads, cfg.d_head
    q, k, v = self._qkv(x, positions, producer)
    if prompt is None:
      b, p = x.shape[:2]
      o = attention_op.attention(q.reshape(b, p, g, r, dh), k, v, key_lengths=length,
                                 causal=True)
      return self._out(o), (k, v)
    pk, pv, plength = prompt
    b, w, t = x.shape[:3]
    # The prompt, shared by the W beams: one attention of W*T*R rows per (request, head).
    o_p, lse_p = attention_op.attention(q.reshape(b, w * t, g, r, dh), pk, pv,
                                        key_lengths=plength, lse=True)
    o_p, lse_p = o_p.reshape(b, w, t, g, r, dh), lse_p.reshape(b, w, t, g, r)
    ancestor = lambda a, i: jnp.take_along_axis(a, rows[:, :, i, None, None], axis=1)
    keys = [ancestor(a, i) for i, (a, _) in enumerate(past)] + [k[:, :, i] for i in range(t)]
    values = [ancestor(a, i) for i, (_, a) in enumerate(past)] + [v[:, :, i] for i in range(t)]
    n = len(past)
    o = jnp.stack([attend_decoded(q[:, :, i].reshape(b, w, g, r, dh), keys[:n + i + 1],
                                  values[:n + i + 1], (o_p[:, :, i], lse_p[:, :, i]))
                   for i in range(t)], axis=2)  # [B, W, T, G, R, dh]
    return self._out(o), (k, v)


class Block(nn.Module):
  """Pre-norm: attention, then the MLP (dense SwiGLU or the MoE block)."""

  config: Qwen3Config
  layer: int

  @nn.compact
  def __call__(self, h, positions, **attention_args):
    cfg = self.config

    def norm(name, x):
      module = RMSNorm(cfg.rms_eps, name=name, **_kw(cfg))
      return module(x), module.producer(x)

    x, producer = norm("attn_norm", h)
    a, kv = Attention(cfg, name="self_attn")(x, positions, producer=producer,
                                             **attention_args)
    h = h + a
    x, producer = norm("mlp_norm", h)
    if cfg.is_moe(self.layer):
      return h + MoE(cfg, name="mlp")(x, producer=producer), kv
    return h + SwiGLU(cfg.d_model, cfg.d_ff, name="mlp", **_kw(cfg))(x, producer=producer), kv


class Qwen3(nn.Module):
  """The decoder. Methods: encode, decode, head (the beam search's interface, above) and
  __call__ (teacher-forced logits of every level)."""

  config: Qwen3Config

  def setup(self):
    cfg = self.config
    self.embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype,
                          param_dtype=cfg.params_dtype,
                          embedding_init=nn.initializers.normal(0.02))
    self.layers = [Block(cfg, i, name=f"layer_{i}") for i in range(cfg.n_layers)]
    self.final_norm = RMSNorm(cfg.rms_eps, **_kw(cfg))
    if not cfg.tie_embeddings:
      self.lm_head = Linear(cfg.vocab_size, **_kw(cfg))

  def encode(self, features: Mapping[str, jax.Array],
             mask: Mapping[str, jax.Array] | None = None) -> dict[str, Any]:
    """Prefills the prompts features["prompt"] [B, P] (mask [B, P]: the real tokens, which
    are moved first, so that the causal attention over them sees only real tokens and
    the position of the j-th is j). A prompt with no real token (generate refuses those)
    attends every padding token."""
    tokens = features[PROMPT]
    b, p = tokens.shape
    length = jnp.full((b,), p, jnp.int32)
    if mask is not None and PROMPT in mask:
      order, length = valid_first(mask[PROMPT].astype(bool))  # [B, P], [B]
      tokens = jnp.take_along_axis(tokens, order, axis=1)
    positions = jnp.broadcast_to(jnp.arange(p), (b, p))  # [B, P]
    h = self.embed(tokens)  # [B, P, D]
    kv = []
    for layer in self.layers:
      h, layer_kv = layer(h, positions, length=length)
      kv.append(layer_kv)
    last = jnp.take_along_axis(h, jnp.maximum(length - 1, 0)[:, None, None], axis=1)[:, 0]
    return {"kv": tuple(kv), "lengths": length, "last": last}

  def decode(self, context: dict[str, Any], ids: jax.Array, past: Past | None = None):
    """[B, W, T] codes of levels past.positions .. -> (hidden [B, W, T, D], per-layer
    (k, v) [B, W, T, G, dh]); without past, the prompt's last hidden state [B, 1, 1, D]
    (the level-0 logits' input) and no positions."""
    cfg = self.config
    if past is None:
      b = context["last"].shape[0]
      none = jnp.zeros((b, 1, 0, cfg.kv_heads, cfg.d_head), cfg.compute_dtype)
      return context["last"][:, None, None], tuple((none, none) for _ in self.layers)
    t = ids.shape[-1]
    levels = past.positions + jnp.arange(t)  # the level of each input code
    offsets = jnp.asarray(cfg.sid_token_offsets, jnp.int32)[levels]  # [T]
    h = self.embed(ids + offsets)  # [B, W, T, D]
    positions = context["lengths"][:, None, None] + levels  # [B, W, T]
    kv = []
    for i, layer in enumerate(self.layers):
      pk, pv = context["kv"][i]
      h, layer_kv = layer(h, positions, prompt=(pk, pv, context["lengths"]),
                          past=past.kv[i], rows=past.rows)
      kv.append(layer_kv)
    return h, tuple(kv)

  def head(self, h: jax.Array, level: int) -> jax.Array:
    """Level `level`'s logits in FP32 over its token range: [..., D] -> [..., C_level]."""
    cfg = self.config
    lo = cfg.sid_token_offsets[level]
    rows = (lo, lo + cfg.codebook_sizes[level])
    x = self.final_norm(h)
    if cfg.tie_embeddings:  # the embedding's rows of the range, never quantized
      table = self.embed.embedding[rows[0]:rows[1]].astype(cfg.compute_dtype)
      return jnp.einsum("...d,vd->...v", x, table, preferred_element_type=jnp.float32,
                        precision=matmul_precision(cfg.compute_dtype))
    return self.lm_head(x, rows=rows).astype(jnp.float32)

  def __call__(self, features: Mapping[str, jax.Array], ids: jax.Array,
               mask: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, ...]:
    """Teacher-forced logits: ids [B, levels] (the item's codes; the last one is never an
    input) -> one [B, codebook_sizes[j]] array per level."""
    context = self.encode(features, mask)
    h0, kv0 = self.decode(context, ids[:, None, :1])
    logits = [self.head(h0[:, 0, 0], 0)]
    if self.config.levels > 1:
      past = extend(None, kv0, jnp.zeros((ids.shape[0], 1), jnp.int32))
      h, _ = self.decode(context, ids[:, None, :-1], past)  # [B, 1, levels - 1, D]
      logits += [self.head(h[:, 0, j - 1], j) for j in range(1, self.config.levels)]
    return tuple(logits)
