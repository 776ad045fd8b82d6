"""FP16 against quantized recipes: recommendation quality on a dataset's test split.

From one FP16 checkpoint: the top beam_width items of every test request by constrained
beam search (onerec_jax.generate) in FP16 and under each recipe (onerec_jax.model.recipes:
how the whole model is quantized); recall@{1,10,50} and NDCG@10 of the next item (on
MovieLens with the request's history items left out of every ranking, the baselines' too:
nobody rates a movie twice), each relative change with its paired standard error and a
bootstrap confidence interval over users (requests of one user are resampled together),
the overlap of the FP16 and recipe top-10 and top-W lists, the overlap of wider beams
(W = 512) on a subset, the SQNR of the teacher-forced logits, the weight bytes, and the
per-module FP8 error table of onerec_jax.lab.analysis. A recipe is "lossless" when the
interval of its recall@10 change lies within +-0.5% (the paper's online bar).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from onerec_jax import generate as gen
from onerec_jax import quant
from onerec_jax.config import Config
from onerec_jax.lab import analysis
from onerec_jax.lab.data import popularity_ranking
from onerec_jax.lab.datasets import Dataset, extra_baselines, seen_items
from onerec_jax.model import default_rules, model_for
from onerec_jax.model.recipes import RECIPES, recipe_rules

RECALL_AT = (1, 10, 50)
NDCG_AT = 10
DEFAULT_RECIPES = ("fp8", "per_tensor")
LOSSLESS = 0.005  # the bar on the recall@10 change's interval
CONFIDENCE = 0.95


# Metrics -----------------------------------------------------------------------------------
def hits_at(ranked: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
  """Per user, 1 if the target is in the top k: ranked [n, W], targets [n] -> [n]."""
  return np.any(ranked[:, :k] == targets[:, None], axis=1).astype(np.float64)


def dcg_at(ranked: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
  """Per user NDCG@k with one relevant item: 1 / log2(rank + 2) if ranked in the top k."""
  hit = ranked[:, :k] == targets[:, None]  # [n, k]
  return np.sum(hit / np.log2(np.arange(k) + 2.0), axis=1)


def drop_seen(ranked: np.ndarray, seen: np.ndarray | None) -> np.ndarray:
  """ranked [n, W] without the items of seen [n, L] (-1 padding), order kept, -1 filling
  the end; ranked itself when seen is None."""
  if seen is None:
    return ranked
  keep = np.stack([~np.isin(r, s) for r, s in zip(ranked, seen)])  # [n, W]
  order = np.argsort(~keep, axis=1, kind="stable")  # kept items first, in order
  return np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(ranked, order, 1),
                  gen.EMPTY)


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


def bootstrap_interval(ref: np.ndarray, test: np.ndarray, groups: np.ndarray,
                       resamples: int = 2000, seed: int = 0,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
  """Percentile interval of the relative change mean(test) / mean(ref) - 1 over resamples
  of whole groups (users) with replacement: ref, test [n] per request, groups [n]."""
  _, inverse = np.unique(groups, return_inverse=True)
  n_groups = inverse.max() + 1
  ref_sum = np.bincount(inverse, ref, n_groups)
  test_sum = np.bincount(inverse, test, n_groups)
  rng = np.random.default_rng(seed)
  weights = rng.multinomial(n_groups, np.full(n_groups, 1 / n_groups), resamples)  # [B, G]
  r, t = weights @ ref_sum, weights @ test_sum
  change = np.where(r > 0, t / np.where(r > 0, r, 1) - 1, 0.0)
  tail = (1 - confidence) / 2 * 100
  return float(np.percentile(change, tail)), float(np.percentile(change, 100 - tail))


Variant = tuple[Any, "quant.Rules | None"]  # (params, rules for quant.fp8 or None)


def variants(params: Any, config: Config, recipes: tuple[str, ...]) -> dict[str, Variant]:
  """FP16 and each recipe, all from the same FP16 params."""
  out = {"fp16": (params, None)}
  for name in recipes:
    rules = recipe_rules(name, config)
    out[name] = (quant.quantize_params(params, rules), rules)
  return out


# Running the model -------------------------------------------------------------------------
def rank(variant: Variant, config: Config, features: dict[str, np.ndarray],
         valid_items: gen.ItemTable, beam_width: int, batch_size: int) -> np.ndarray:
  """Item ids [n, beam_width], best first, by constrained beam search."""
  params, rules = variant
  return gen.generate(params, config, features, beam_width=beam_width,
                      valid_items=valid_items, rules=rules,
                      batch_buckets=(batch_size,)).item_ids


def teacher_forced_logits(variant: Variant, config: Config, features, ids,
                          batch_size: int) -> list[np.ndarray]:
  """Per-level logits [n, C_j] of the true targets' prefixes."""
  model = model_for(config)
  params, rules = variant

  @jax.jit
  def run(params, f, i):
    if rules is None:
      return model.apply({"params": params}, f, i)
    with quant.fp8(rules):
      return model.apply({"params": params}, f, i)

  parts = [run(params, {k: v[lo:lo + batch_size] for k, v in features.items()},
               jnp.asarray(ids[lo:lo + batch_size]))
           for lo in range(0, len(ids), batch_size)]
  return [np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(config.levels)]


def rule_ablation(params: Any, config: Config, features, ids, batch_size: int
                  ) -> list[dict[str, Any]]:
  """Logits SQNR per level with only one default rule's modules in FP8 at a time, on real
  requests: which module group the FP8 logits error comes from."""
  ref = teacher_forced_logits((params, None), config, features, ids, batch_size)
  rows = []
  for rule in default_rules(config).rules:
    one = quant.Rules((rule,))
    out = teacher_forced_logits((quant.quantize_params(params, one), one), config,
                                features, ids, batch_size)
    rows.append({"rule": rule[0], "scheme": rule[1],
                 "logits_sqnr_db": [analysis.sqnr_db(a, b) for a, b in zip(ref, out)]})
  return rows


# The evaluation ----------------------------------------------------------------------------
def _spread(n: int, k: int) -> np.ndarray:
  """k request indices spread evenly over n (many users, not the first few)."""
  return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


def evaluate(params: Any, config: Config, dataset: Dataset, *, beam_width: int = 64,
             batch_size: int = 64, every_cut: bool = True, max_requests: int | None = None,
             recipes: tuple[str, ...] = DEFAULT_RECIPES, wide_beam_width: int = 512,
             wide_requests: int = 256, bootstrap: int = 2000, analysis_batch: int = 32,
             ablation_requests: int = 1024, progress=print) -> dict[str, Any]:
  """The full report (JSON-serialisable) for FP16 params on dataset's test split: one
  request per test user and cut point (every_cut; else the last cut only), max_requests
  of them spread over the split when given; the wide beams on wide_requests of those
  (none when 0)."""
  if beam_width < max(RECALL_AT):
    raise ValueError(f"beam_width={beam_width} must be at least {max(RECALL_AT)} for "
                     f"recall@{max(RECALL_AT)}")
  users, cuts = dataset.examples("test", every_cut)
  if max_requests is not None:
    pick = _spread(len(users), max_requests)
    users, cuts = users[pick], cuts[pick]
  features = dataset.features(users, cuts)
  targets = dataset.targets(users, cuts)
  target_ids = dataset.semantic_ids[targets]
  valid_items = gen.build_item_table(dataset.item_ids, dataset.semantic_ids,
                                     config.codebook_sizes)
  seen = seen_items(dataset, users, cuts)
  popular = popularity_ranking(dataset)[:beam_width + (0 if seen is None else seen.shape[1])]
  baselines = {"popularity": drop_seen(np.broadcast_to(popular, (len(users), len(popular))),
                                       seen)[:, :beam_width],
               **extra_baselines(dataset, users, cuts, beam_width)}
  runs = variants(params, config, recipes)
  wide = _spread(len(users), wide_requests) if wide_requests else np.zeros(0, int)
  wide_features = {k: v[wide] for k, v in features.items()}

  ranked, wide_ranked, logits = {}, {}, {}
  for name in ("fp16",) + tuple(recipes):
    progress(f"evaluate: {name}: beam search over {len(users)} test requests")
    ranked[name] = rank(runs[name], config, features, valid_items, beam_width, batch_size)
    logits[name] = teacher_forced_logits(runs[name], config, features, target_ids,
                                         batch_size)
    if len(wide):
      progress(f"evaluate: {name}: beam width {wide_beam_width} on {len(wide)} requests")
      wide_ranked[name] = rank(runs[name], config, wide_features, valid_items,
                               wide_beam_width, min(batch_size, 16))
  per_user = {name: per_user_metrics(drop_seen(r, seen), targets)
              for name, r in ranked.items()}
  fp16 = {k: float(v.mean()) for k, v in per_user["fp16"].items()}
  report = {
      "test_requests": len(users), "test_users": len(np.unique(users)),
      "beam_width": beam_width, "wide_beam_width": wide_beam_width,
      "wide_requests": len(wide), "bootstrap_resamples": bootstrap,
      "valid_items": valid_items.num_items, "history_items_excluded": seen is not None,
      "baselines": {k: ranking_metrics(r, targets) for k, r in baselines.items()},
      "fp16": fp16, "fp16_weight_bytes": quant.weight_bytes(params), "recipes": {}}
  for name in recipes:
    metrics = {k: float(v.mean()) for k, v in per_user[name].items()}
    ci = {k: bootstrap_interval(per_user["fp16"][k], per_user[name][k], users, bootstrap)
          for k in fp16}
    report["recipes"][name] = {
        "about": RECIPES[name].about,
        "metrics": metrics,
        "relative_change": {k: relative_change(fp16[k], metrics[k]) for k in fp16},
        # Sampling noise of that change (paired over requests), relative to FP16.
        "relative_change_se": {k: paired_se(per_user["fp16"][k], per_user[name][k])
                               / fp16[k] if fp16[k] else 0.0 for k in fp16},
        "relative_change_ci": ci,
        "lossless": bool(-LOSSLESS <= ci["recall@10"][0] and ci["recall@10"][1] <= LOSSLESS),
        "overlap@10": overlap_at(ranked["fp16"], ranked[name], 10),
        f"overlap@{beam_width}": overlap_at(ranked["fp16"], ranked[name], beam_width),
        **({f"overlap@{wide_beam_width}": overlap_at(wide_ranked["fp16"], wide_ranked[name],
                                                     wide_beam_width)} if len(wide) else {}),
        "logits_sqnr_db": [analysis.sqnr_db(a, b)
                           for a, b in zip(logits["fp16"], logits[name])],
        "weight_bytes": quant.weight_bytes(runs[name][0]),
    }
  progress("evaluate: per-module FP8 error table")
  report["module_errors"] = analysis.analyze(config, params, batch=analysis_batch)
  if ablation_requests:
    progress(f"evaluate: FP8 one rule at a time on {ablation_requests} requests")
    n = ablation_requests
    report["rule_ablation"] = rule_ablation(
        params, config, {k: v[:n] for k, v in features.items()}, target_ids[:n], batch_size)
  report["summary"] = summary(report)
  return report


def verdict(lossless: bool, ci_low: float, ci_high: float) -> str:
  """lossless (the recall@10 interval within the ±LOSSLESS band), loss / gain (the
  interval wholly beyond it), or unresolved (it reaches past the band on a side but holds
  values inside)."""
  if lossless:
    return "lossless"
  if ci_high < -LOSSLESS:
    return "loss"
  if ci_low > LOSSLESS:
    return "gain"
  return "unresolved"


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per recipe, FP16 first: the recall@10 change, its interval, the verdict, the
  overlap with FP16 at the widest beam measured (named by its width), the weight bytes."""
  wide = report["wide_beam_width"] if report.get("wide_requests") else report["beam_width"]
  rows = [{"scheme": "fp16", "recall10_change": 0.0, "ci_low": 0.0, "ci_high": 0.0,
           f"overlap_w{wide}": 1.0, "lossless": True,
           "weight_bytes": report["fp16_weight_bytes"], "verdict": "reference"}]
  for name, r in report["recipes"].items():
    lo, hi = r["relative_change_ci"]["recall@10"]
    rows.append({"scheme": name, "recall10_change": r["relative_change"]["recall@10"],
                 "ci_low": lo, "ci_high": hi, f"overlap_w{wide}": r[f"overlap@{wide}"],
                 "lossless": r["lossless"], "weight_bytes": r["weight_bytes"],
                 "verdict": verdict(r["lossless"], lo, hi)})
  return rows


def cheapest_lossless(rows: list[dict[str, Any]]) -> dict[str, Any]:
  """The lossless row with the fewest weight bytes (FP16's when no recipe is)."""
  return min((r for r in rows if r["lossless"]), key=lambda r: r["weight_bytes"])


def summary(report: dict[str, Any]) -> dict[str, Any]:
  """A report's headline figures: summary_rows and the cheapest lossless recipe."""
  rows = summary_rows(report)
  return {"recipes": rows, "cheapest_lossless": cheapest_lossless(rows)["scheme"]}


def _pct(x: float) -> str:
  return f"{100 * x:+.2f}%"


def markdown_table(report: dict[str, Any], recipe: str) -> str:
  """The paper's A/B table shape: metric, FP16, the recipe, relative change."""
  s = report["recipes"][recipe]
  w, wide = report["beam_width"], report["wide_beam_width"]
  lines = [f"| metric | FP16 | {recipe} | relative change (± s.e.) | "
           f"{100 * CONFIDENCE:.0f}% interval |", "| --- | ---: | ---: | ---: | ---: |"]
  for k, v in report["fp16"].items():
    lo, hi = s["relative_change_ci"][k]
    lines.append(f"| {k} | {v:.4f} | {s['metrics'][k]:.4f} | "
                 f"{_pct(s['relative_change'][k])} ± "
                 f"{100 * s['relative_change_se'][k]:.2f}% | [{_pct(lo)}, {_pct(hi)}] |")
  for k in (10, w, wide):
    if f"overlap@{k}" in s:
      lines.append(f"| top-{k} overlap with FP16 | | {100 * s[f'overlap@{k}']:.1f}% | | |")
  sqnr = ", ".join(f"{x:.1f}" for x in s["logits_sqnr_db"])
  lines.append(f"| logits SQNR per level (dB) | | {sqnr} | | |")
  return "\n".join(lines)


def summary_table(report: dict[str, Any]) -> str:
  """One row per recipe: the recall@10 change and its interval, lossless or not, the
  overlaps, the weight bytes."""
  wide = report["wide_beam_width"] if report["wide_requests"] else report["beam_width"]
  lines = [f"| recipe | recall@10 change | {100 * CONFIDENCE:.0f}% interval | lossless "
           f"(±{100 * LOSSLESS:.1f}%) | top-10 overlap | top-{wide} overlap | weights MB |",
           "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
           f"| fp16 | | | | | | {report['fp16_weight_bytes'] / 1e6:.2f} |"]
  for name, s in report["recipes"].items():
    lo, hi = s["relative_change_ci"]["recall@10"]
    ov = s.get(f"overlap@{wide}")
    lines.append(f"| {name} | {_pct(s['relative_change']['recall@10'])} | "
                 f"[{_pct(lo)}, {_pct(hi)}] | {'yes' if s['lossless'] else 'no'} | "
                 f"{100 * s['overlap@10']:.1f}% | "
                 f"{'' if ov is None else f'{100 * ov:.1f}%'} | "
                 f"{s['weight_bytes'] / 1e6:.2f} |")
  return "\n".join(lines)


def baseline_table(report: dict[str, Any]) -> str:
  """The baselines against the FP16 model."""
  names = list(report["baselines"])
  lines = ["| metric | " + " | ".join(names) + " | model (FP16) |",
           "| --- |" + " ---: |" * (len(names) + 1)]
  for k, v in report["fp16"].items():
    lines.append(f"| {k} | " + " | ".join(f"{report['baselines'][b][k]:.4f}" for b in names)
                 + f" | {v:.4f} |")
  return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
  """All tables: baselines, the summary, one A/B table per recipe, the rule ablation, the
  per-module FP8 error table."""
  wide = (f" (top-{report['wide_beam_width']} overlap on {report['wide_requests']} of "
          f"them)" if report["wide_requests"] else "")
  history = (", history items left out of the rankings" if report["history_items_excluded"]
             else "")
  parts = [f"Test requests: {report['test_requests']} ({report['test_users']} users), beam "
           f"width {report['beam_width']}{wide}, {report['valid_items']} valid items"
           f"{history}; intervals from {report['bootstrap_resamples']} bootstrap resamples of users.",
           "", baseline_table(report), "", summary_table(report)]
  for name in report["recipes"]:
    parts += ["", markdown_table(report, name)]
  if "rule_ablation" in report:
    parts += ["", "Logits SQNR (dB) per level with one default rule's modules in FP8 at a "
              "time (test requests):", "", "| rule | scheme | SQNR per level (dB) |",
              "| --- | --- | --- |"]
    escape = lambda text: text.replace("|", "\\|")  # a pipe inside a table cell
    parts += [f"| `{escape(r['rule'])}` | {r['scheme']} | "
              f"{', '.join(f'{x:.1f}' for x in r['logits_sqnr_db'])} |"
              for r in report["rule_ablation"]]
  parts += ["", "Per-module FP8 error (default rules; onerec_jax.lab.analysis):", "", "```",
            analysis.format_table(report["module_errors"]), "```"]
  return "\n".join(parts)
