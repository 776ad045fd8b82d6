"""Quantization formats beyond per-channel FP8 e4m3, the specification (docs/frontier.md).

A `Quantizer` turns a tensor [..., M, K] into (value, scale), its groups along the last
axis (K, the reduction axis of every matmul operand here):
- group None: one scale per row: per output channel of a weight [N, K] (or [E, N, K]),
  per token of an activation;
- group g: 1 x g groups along K (INT4 group-128, the OCP MX formats' 1 x 32);
- tensor: one scale for the whole tensor (the deliberately bad recipes).
Scales are either FP32, scale = amax * fl32(1 / largest) (a zero amax gives 1), or E8M0
powers of two (OCP Microscaling Formats (MX) v1.0, section 6.3): scale = 2^(floor(log2
amax) - emax_elem), emax_elem the exponent of the format's largest normal (8 for e4m3, 2
for e2m1), clamped to E8M0's 2^-127 .. 2^127 (a zero amax gives 1). Values are
round-to-nearest-even of clip(x / scale, -largest, largest) in the element format.
FP8 e4m3 goes through reference.py's own scale and cast, so the FP8 specification stays
the one definition of e4m3.

4-bit values are stored packed two to a byte (pack_nibbles): uint8 [..., ceil(K/2)],
element 2j in the low nibble of byte j and 2j + 1 in the high one, each nibble the
element's 4-bit code (int4 two's complement, e2m1 its OCP code); an odd K leaves the last
high nibble 0. A kernel reads half a byte per weight, and packing happens once, offline.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from onerec_kernels.quantize.reference import FP8_MAX, cast_to_fp8, scale_from_amax

E8M0_DTYPE = jnp.float8_e8m0fnu
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127  # 2^-127 .. 2^127 (0xFF is NaN)


@dataclasses.dataclass(frozen=True)
class Format:
  """An element format: its storage dtype and largest finite magnitude."""

  name: str
  dtype: object
  largest: float

  @property
  def integer(self) -> bool:
    return jnp.issubdtype(self.dtype, jnp.integer)

  @property
  def bits(self) -> int:
    info = jnp.iinfo(self.dtype) if self.integer else jnp.finfo(self.dtype)
    return info.bits

  @property
  def emax(self) -> int:
    """Exponent of the largest normal (OCP MX's emax_elem): floor(log2(largest))."""
    return math.floor(math.log2(self.largest))

  def scale_from_amax(self, amax: jax.Array) -> jax.Array:
    """FP32 scale mapping amax to `largest`; a zero amax gives 1."""
    if self is E4M3:
      return scale_from_amax(amax)
    amax = amax.astype(jnp.float32)
    return jnp.where(amax > 0, amax * jnp.float32(1.0 / self.largest), jnp.float32(1.0))

  def cast(self, x: jax.Array, scale: jax.Array) -> jax.Array:
    """RNE(clip(x / scale, +-largest)) in this format (scale broadcast to x)."""
    if self is E4M3:
      return cast_to_fp8(x, scale)
    y = jnp.clip(x.astype(jnp.float32) / scale, -self.largest, self.largest)
    return (jnp.round(y) if self.integer else y).astype(self.dtype)


E4M3 = Format("e4m3", jnp.float8_e4m3fn, FP8_MAX)
E5M2 = Format("e5m2", jnp.float8_e5m2, 57344.0)
INT8 = Format("int8", jnp.int8, 127.0)
INT4 = Format("int4", jnp.int4, 7.0)
E2M1 = Format("e2m1", jnp.float4_e2m1fn, 6.0)
FORMATS = {f.name: f for f in (E4M3, E5M2, INT8, INT4, E2M1)}


def pack_nibbles(value: jax.Array) -> jax.Array:
  """4-bit values [..., K] (int4 or float4_e2m1fn) -> uint8 [..., ceil(K/2)], the packed
  layout above."""
  if value.dtype not in (INT4.dtype, E2M1.dtype):
    raise ValueError(f"pack_nibbles: 4-bit values (int4, float4_e2m1fn), got {value.dtype}")
  codes = jax.lax.bitcast_convert_type(value, jnp.uint4).astype(jnp.uint8)  # [..., K]
  codes = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, codes.shape[-1] % 2)])
  return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: jax.Array, dtype, k: int) -> jax.Array:
  """The inverse of pack_nibbles: uint8 [..., ceil(k/2)] -> [..., k] in dtype (int4 or
  float4_e2m1fn)."""
  if packed.dtype != jnp.uint8 or packed.shape[-1] != -(-k // 2):
    raise ValueError(f"unpack_nibbles: packed 4-bit values of K={k} are uint8 [..., "
                     f"{-(-k // 2)}], got {packed.dtype} {tuple(packed.shape)}")
  codes = jnp.stack([packed & 0xF, packed >> 4], axis=-1)  # [..., ceil(k/2), 2]
  codes = codes.reshape(*packed.shape[:-1], -1)[..., :k]
  return jax.lax.bitcast_convert_type(codes.astype(jnp.uint4), dtype)


def e8m0_scale(amax: jax.Array, fmt: Format) -> jax.Array:
  """OCP MX shared scale 2^(floor(log2 amax) - emax_elem) as float8_e8m0fnu; zero amax
  gives 1. floor(log2) is exact: frexp's exponent minus one."""
  amax = amax.astype(jnp.float32)
  _, exp = jnp.frexp(amax)  # amax = m 2^exp, m in [0.5, 1)
  shared = jnp.clip(exp - 1 - fmt.emax, E8M0_MIN_EXP, E8M0_MAX_EXP)
  shared = jnp.where(amax > 0, shared, 0)
  return jnp.ldexp(jnp.float32(1.0), shared).astype(E8M0_DTYPE)


@dataclasses.dataclass(frozen=True)
class Quantizer:
  """How a tensor is quantized along its last axis: element format, group (None: the
  whole row), one scale for the whole tensor, and E8M0 (power-of-two) scales. Hashable:
  a static argument of the ops."""

  format: Format
  group: int | None = None
  tensor: bool = False
  power_of_two: bool = False

  def __post_init__(self):
    if self.tensor and self.group is not None:
      raise ValueError("a per-tensor quantizer has no groups")
    if self.power_of_two and self.group is None:
      raise ValueError("E8M0 scales are per 1 x group blocks (OCP MX)")

  @property
  def name(self) -> str:
    where = ("tensor" if self.tensor else "row" if self.group is None
             else f"1x{self.group}")
    return f"{self.format.name}/{where}" + ("/e8m0" if self.power_of_two else "")

  def scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    """() per tensor, shape[:-1] per row, (*shape[:-1], ceil(K / group)) per group."""
    if self.tensor:
      return ()
    if self.group is None:
      return tuple(shape[:-1])
    return (*shape[:-1], -(-shape[-1] // self.group))

  def bits_per_element(self, k: int, rows: int = 1) -> float:
    """Storage per element, the scales included (rows: how many rows share a tensor
    scale)."""
    scale_bits = 8 if self.power_of_two else 32
    per_scale = (rows * k if self.tensor else k if self.group is None
                 else self.group)
    return self.format.bits + scale_bits / per_scale

  def _groups(self, x: jax.Array) -> jax.Array:
    """|x| in FP32 as [..., G, group] (zero-padded), or [..., 1, K] per row."""
    a = jnp.abs(x.astype(jnp.float32))
    if self.group is None:
      return a[..., None, :]
    k = x.shape[-1]
    g = -(-k // self.group)
    a = jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, g * self.group - k)])
    return a.reshape(*a.shape[:-1], g, self.group)

  def _expand(self, scale: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Scale broadcast to the elements of a tensor of `shape`, in FP32."""
    s = scale.astype(jnp.float32)
    if self.tensor:
      return s
    if self.group is None:
      return s[..., None]
    return jnp.repeat(s, self.group, axis=-1)[..., :shape[-1]]

  def quantize(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [..., K] -> (value [..., K] in the format's dtype, scale of scale_shape)."""
    if self.tensor:
      amax = jnp.max(jnp.abs(x.astype(jnp.float32)))
    else:
      amax = jnp.max(self._groups(x), axis=-1)  # [..., G]
      amax = amax[..., 0] if self.group is None else amax
    scale = (e8m0_scale(amax, self.format) if self.power_of_two
             else self.format.scale_from_amax(amax))
    return self.format.cast(x, self._expand(scale, x.shape)), scale

  def dequantize(self, value: jax.Array, scale: jax.Array) -> jax.Array:
    """value * scale in FP32 (one rounding per element; none for E8M0 scales)."""
    return value.astype(jnp.float32) * self._expand(scale, value.shape)

  @property
  def packed(self) -> bool:
    """True where values are stored packed two to a byte (4-bit formats)."""
    return self.format.bits == 4

  def pack(self, value: jax.Array) -> jax.Array:
    """value [..., K] from quantize in its storage layout: pack_nibbles for 4-bit
    formats, unchanged otherwise."""
    return pack_nibbles(value) if self.packed else value

  def unpack(self, stored: jax.Array, k: int) -> jax.Array:
    """The inverse of pack, for values of K = k: [..., k] in the format's dtype."""
    if self.packed:
      return unpack_nibbles(stored, self.format.dtype, k)
    if stored.shape[-1] != k:
      raise ValueError(f"{self.name} values of K={k} have last axis {k}, got shape "
                       f"{tuple(stored.shape)}")
    return stored

  def quantize_packed(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """quantize(x) with the value in its storage layout (pack): how a weight is kept."""
    value, scale = self.quantize(x)
    return self.pack(value), scale

  def round_trip(self, x: jax.Array) -> jax.Array:
    """x through this quantizer and back, in FP32."""
    return self.dequantize(*self.quantize(x))
