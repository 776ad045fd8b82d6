"""FP16 vs FP8 recommendation quality on a dataset's test split (the paper's A/B claim).

From one FP16 checkpoint: the top beam_width items of every test user by constrained beam
search (onerec_jax.generate) in FP16 and under each FP8 recipe; recall@{1,10,50} and NDCG@10
of the next item, the overlap of the FP16 and FP8 top-10 and top-W lists, the SQNR of the
teacher-forced logits, and the per-module FP8 error table of onerec_jax.lab.analysis.
Recipes (a recipe is how the whole model is quantized): "fp8", the paper's (default rules:
per-channel/per-token, 128x128 blocks for experts), and "per_tensor", a deliberately bad
one (one scale per weight tensor and one per activation tensor, on the same modules) that
shows the evaluation can tell a bad recipe apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from onerec_kernels.quantize import dequantize_rows, quantize_rows

from onerec_jax import generate as gen
from onerec_jax import quant
from onerec_jax.config import Config
from onerec_jax.lab import analysis
from onerec_jax.lab.data import Dataset, popularity_ranking
from onerec_jax.model import default_rules, model_for

RECALL_AT = (1, 10, 50)
NDCG_AT = 10
RECIPES = ("fp8", "per_tensor")


# Metrics -----------------------------------------------------------------------------------
def hits_at(ranked: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
  """Per user, 1 if the target is in the top k: ranked [n, W], targets [n] -> [n]."""
  return np.any(ranked[:, :k] == targets[:, None], axis=1).astype(np.float64)


def dcg_at(ranked: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
  """Per user NDCG@k with one relevant item: 1 / log2(rank + 2) if ranked in the top k."""
  hit = ranked[:, :k] == targets[:, None]  # [n, k]
  return np.sum(hit / np.log2(np.arange(k) + 2.0), axis=1)


def recall_at(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
  """Fraction of users whose target is in their top k."""
  return float(np.mean(hits_at(ranked, targets, k)))


def ndcg_at(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
  return float(np.mean(dcg_at(ranked, targets, k)))


def per_user_metrics(ranked: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
  """recall@{1,10,50} and NDCG@10 per user, each [n]."""
  out = {f"recall@{k}": hits_at(ranked, targets, k) for k in RECALL_AT}
  out[f"ndcg@{NDCG_AT}"] = dcg_at(ranked, targets, NDCG_AT)
  return out


def ranking_metrics(ranked: np.ndarray, targets: np.ndarray) -> dict[str, float]:
  """recall@{1,10,50} and NDCG@10 averaged over users."""
  return {k: float(v.mean()) for k, v in per_user_metrics(ranked, targets).items()}


def paired_se(a: np.ndarray, b: np.ndarray) -> float:
  """Standard error of mean(b) - mean(a) over the same users (per-user values [n])."""
  d = b - a
  return float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def overlap_at(a: np.ndarray, b: np.ndarray, k: int) -> float:
  """Mean fraction of the top-k lists two models share, per user (empty slots, -1, never
  count as shared)."""
  shared = [len(set(x[:k]) & set(y[:k]) - {gen.EMPTY}) for x, y in zip(a, b)]
  return float(np.mean(shared) / k)


def relative_change(ref: float, test: float) -> float:
  """(test - ref) / ref; 0 when both are 0."""
  return 0.0 if ref == test else (test - ref) / ref if ref else math.inf


# The deliberately bad recipe ---------------------------------------------------------------
def _per_tensor(x: jax.Array) -> jax.Array:
  """x through FP8 with one scale for the whole tensor (quantized as one row), in FP32."""
  value, scale = quantize_rows(x.reshape(1, -1))
  return dequantize_rows(value, scale).reshape(x.shape)


def per_tensor_params(params: Any, rules: quant.Rules) -> Any:
  """Every weight that `rules` quantize replaced by its per-tensor FP8 value, in FP32 (a
  different dtype from the FP16 tree, so jitted functions trace it separately)."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      k: _per_tensor(v) if k[-1] == "weight" and rules.scheme("/".join(k[:-1])) != "none"
      else v for k, v in flat.items()})


@contextlib.contextmanager
def per_tensor_activations(rules: quant.Rules) -> Iterator[None]:
  """The inputs of the modules that `rules` quantize go through per-tensor FP8 (use with
  per_tensor_params: then every product is an FP8 x FP8 product accumulated in FP32)."""

  def interceptor(next_fun, args, kwargs, context):
    path = "/".join(context.module.path)
    if context.method_name != "__call__" or rules.scheme(path) == "none":
      return next_fun(*args, **kwargs)
    x, *rest = args
    return next_fun(_per_tensor(x).astype(x.dtype), *rest, **kwargs)

  with nn.intercept_methods(interceptor):
    yield


@dataclasses.dataclass(frozen=True)
class Variant:
  """One way to run the model: its params, FP8 rules for quant.fp8 (or None), and the
  context manager its apply calls run in (or None)."""

  params: Any
  rules: quant.Rules | None = None
  scope: Callable[[], contextlib.AbstractContextManager] | None = None

  def enter(self) -> contextlib.AbstractContextManager:
    return self.scope() if self.scope else contextlib.nullcontext()


def variants(params: Any, config: Config) -> dict[str, Variant]:
  """FP16 and the two FP8 recipes from the same FP16 params."""
  rules = default_rules(config)
  return {
      "fp16": Variant(params),
      "fp8": Variant(quant.quantize_params(params, rules), rules),
      "per_tensor": Variant(per_tensor_params(params, rules),
                            scope=lambda: per_tensor_activations(rules)),
  }


# Running the model -------------------------------------------------------------------------
def rank(variant: Variant, config: Config, features: dict[str, np.ndarray],
         valid_items: gen.ItemTable, beam_width: int, batch_size: int) -> np.ndarray:
  """Item ids [n, beam_width], best first, by constrained beam search."""
  with variant.enter():
    res = gen.generate(variant.params, config, features, beam_width=beam_width,
                       valid_items=valid_items, rules=variant.rules,
                       batch_buckets=(batch_size,))
  return res.item_ids


def teacher_forced_logits(variant: Variant, config: Config, features, ids,
                          batch_size: int) -> list[np.ndarray]:
  """Per-level logits [n, C_j] of the true targets' prefixes."""
  model = model_for(config)

  @jax.jit
  def run(params, f, i):
    with variant.enter(), (quant.fp8(variant.rules) if variant.rules
                           else contextlib.nullcontext()):
      return model.apply({"params": params}, f, i)

  parts = [run(variant.params, {k: v[lo:lo + batch_size] for k, v in features.items()},
               jnp.asarray(ids[lo:lo + batch_size]))
           for lo in range(0, len(ids), batch_size)]
  return [np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(config.levels)]


def rule_ablation(params: Any, config: Config, features, ids, batch_size: int
                  ) -> list[dict[str, Any]]:
  """Logits SQNR per level with only one default rule's modules in FP8 at a time, on real
  requests: which module group the FP8 logits error comes from."""
  ref = teacher_forced_logits(Variant(params), config, features, ids, batch_size)
  rows = []
  for rule in default_rules(config).rules:
    one = quant.Rules((rule,))
    out = teacher_forced_logits(Variant(quant.quantize_params(params, one), one), config,
                                features, ids, batch_size)
    rows.append({"rule": rule[0], "scheme": rule[1],
                 "logits_sqnr_db": [analysis.sqnr_db(a, b) for a, b in zip(ref, out)]})
  return rows


# The evaluation ----------------------------------------------------------------------------
def evaluate(params: Any, config: Config, dataset: Dataset, *, beam_width: int = 64,
             batch_size: int = 64, every_cut: bool = True, max_requests: int | None = None,
             recipes: tuple[str, ...] = RECIPES, analysis_batch: int = 32,
             ablation_requests: int = 1024, progress=print) -> dict[str, Any]:
  """The full report (JSON-serialisable) for FP16 params on dataset's test split: one
  request per test user and cut point (every_cut; else the last cut only), the first
  max_requests of them when given."""
  if beam_width < max(RECALL_AT):
    raise ValueError(f"beam_width={beam_width} must be at least {max(RECALL_AT)} for "
                     f"recall@{max(RECALL_AT)}")
  users, cuts = dataset.examples("test", every_cut)
  users, cuts = users[:max_requests], cuts[:max_requests]
  features = dataset.features(users, cuts)
  targets = dataset.targets(users, cuts)
  target_ids = dataset.semantic_ids[targets]
  valid_items = gen.build_item_table(dataset.item_ids, dataset.semantic_ids,
                                     config.codebook_sizes)
  pop = np.broadcast_to(popularity_ranking(dataset)[:beam_width], (len(users), beam_width))
  runs = variants(params, config)

  ranked, logits = {}, {}
  for name in ("fp16",) + tuple(recipes):
    progress(f"evaluate: {name}: beam search over {len(users)} test requests")
    ranked[name] = rank(runs[name], config, features, valid_items, beam_width, batch_size)
    logits[name] = teacher_forced_logits(runs[name], config, features, target_ids,
                                         batch_size)
  per_user = {name: per_user_metrics(r, targets) for name, r in ranked.items()}
  fp16 = {k: float(v.mean()) for k, v in per_user["fp16"].items()}
  report = {
      "test_requests": len(users), "test_users": len(np.unique(users)),
      "beam_width": beam_width, "valid_items": valid_items.num_items,
      "popularity_baseline": ranking_metrics(pop, targets), "fp16": fp16, "recipes": {}}
  for name in recipes:
    metrics = {k: float(v.mean()) for k, v in per_user[name].items()}
    report["recipes"][name] = {
        "metrics": metrics,
        "relative_change": {k: relative_change(fp16[k], metrics[k]) for k in fp16},
        # Sampling noise of that change (paired over users), relative to FP16.
        "relative_change_se": {k: paired_se(per_user["fp16"][k], per_user[name][k])
                               / fp16[k] if fp16[k] else 0.0 for k in fp16},
        "overlap@10": overlap_at(ranked["fp16"], ranked[name], 10),
        f"overlap@{beam_width}": overlap_at(ranked["fp16"], ranked[name], beam_width),
        "logits_sqnr_db": [analysis.sqnr_db(a, b)
                           for a, b in zip(logits["fp16"], logits[name])],
    }
  progress("evaluate: per-module FP8 error table")
  report["module_errors"] = analysis.analyze(config, params, batch=analysis_batch)
  progress(f"evaluate: FP8 one rule at a time on {ablation_requests} requests")
  n = ablation_requests
  report["rule_ablation"] = rule_ablation(
      params, config, {k: v[:n] for k, v in features.items()}, target_ids[:n], batch_size)
  return report


def markdown_table(report: dict[str, Any], recipe: str) -> str:
  """The paper's A/B table shape: metric, FP16, FP8, relative change."""
  s = report["recipes"][recipe]
  w = report["beam_width"]
  lines = [f"| metric | FP16 | FP8 ({recipe}) | relative change (± s.e.) |",
           "| --- | ---: | ---: | ---: |"]
  for k, v in report["fp16"].items():
    lines.append(f"| {k} | {v:.4f} | {s['metrics'][k]:.4f} | "
                 f"{100 * s['relative_change'][k]:+.2f}% ± "
                 f"{100 * s['relative_change_se'][k]:.2f}% |")
  lines.append(f"| top-10 overlap with FP16 | | {100 * s['overlap@10']:.1f}% | |")
  lines.append(f"| top-{w} overlap with FP16 | | {100 * s[f'overlap@{w}']:.1f}% | |")
  sqnr = ", ".join(f"{x:.1f}" for x in s["logits_sqnr_db"])
  lines.append(f"| logits SQNR per level (dB) | | {sqnr} | |")
  return "\n".join(lines)


def baseline_table(report: dict[str, Any]) -> str:
  """Popularity baseline against the FP16 model."""
  lines = ["| metric | popularity | model (FP16) |", "| --- | ---: | ---: |"]
  for k, v in report["fp16"].items():
    lines.append(f"| {k} | {report['popularity_baseline'][k]:.4f} | {v:.4f} |")
  return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
  """All tables: baseline, one A/B table per recipe, the per-module FP8 error table."""
  parts = [f"Test requests: {report['test_requests']} ({report['test_users']} users), beam "
           f"width {report['beam_width']}, {report['valid_items']} valid items.", "",
           baseline_table(report)]
  for name in report["recipes"]:
    parts += ["", markdown_table(report, name)]
  parts += ["", "Logits SQNR (dB) per level with one default rule's modules in FP8 at a time "
            "(test requests):", "", "| rule | scheme | SQNR per level (dB) |",
            "| --- | --- | --- |"]
  escape = lambda text: text.replace("|", "\\|")  # a pipe inside a table cell
  parts += [f"| `{escape(r['rule'])}` | {r['scheme']} | "
            f"{', '.join(f'{x:.1f}' for x in r['logits_sqnr_db'])} |"
            for r in report["rule_ablation"]]
  parts += ["", "Per-module FP8 error (default rules; onerec_jax.lab.analysis):", "", "```",
            analysis.format_table(report["module_errors"]), "```"]
  return "\n".join(parts)
