"""Weight and activation statistics behind FP8 (the paper's Figure 1) and FP8 errors.

For every weight matrix, and for the activations entering every quantized module on a
sample batch, it computes variance, AbsMax and AbsP99 and their means over tensors; for
every quantized module, the SQNR of its FP8 output against its unquantized output on the
same input; for the whole model, the SQNR and cosine of FP8 against unquantized logits.
Activations are captured with onerec_jax.quant.capture (a method interceptor), not by
editing the model.
"""

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from onerec_jax import quant
from onerec_jax.config import Config
from onerec_jax.model import default_rules, model_for

STATS = ("variance", "absmax", "absp99")
Batch = tuple[dict[str, jax.Array], jax.Array]


def tensor_stats(x: Any) -> dict[str, float]:
  """Variance, largest magnitude and 99th percentile of the magnitudes, over all elements."""
  x = np.asarray(x, np.float64).ravel()
  a = np.abs(x)
  return {"variance": float(np.var(x)), "absmax": float(a.max()),
          "absp99": float(np.percentile(a, 99))}


def sqnr_db(ref: Any, test: Any) -> float:
  """10 log10(|ref|^2 / |ref - test|^2); inf when they are equal."""
  ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
  noise = np.sum((ref - test) ** 2)
  return float("inf") if noise == 0 else float(10 * np.log10(np.sum(ref**2) / noise))


def cosine(a: Any, b: Any) -> float:
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def sample_batch(config: Config, batch: int, seed: int) -> Batch:
  """Random contexts filling every pathway (standard-normal features; token ids uniform
  over the vocabulary where the width is 0), random item codes."""
  rng = np.random.default_rng(seed)
  features = {p.name: jnp.asarray(rng.integers(0, config.vocab_size, (batch, p.max_len)),
                                  jnp.int32) if p.width == 0 else
              jnp.asarray(rng.standard_normal((batch, p.max_len, p.width)),
                          config.compute_dtype) for p in config.pathways}
  ids = jnp.asarray(rng.integers(0, min(config.codebook_sizes), (batch, config.levels)),
                    jnp.int32)
  return features, ids


def fp8_run(config: Config, params: Any, rules: quant.Rules, batch: Batch):
  """One jitted pass: (unquantized logits, FP8 logits, {module path: Captured call of the
  unquantized run}, {module path: the FP8 op's output on that call's arguments, its
  producer included, as the FP8 model runs it})."""
  model = model_for(config)

  @jax.jit
  def run(params, features, ids):
    with quant.capture(rules) as calls:
      ref = model.apply({"params": params}, features, ids)
    qparams = quant.quantize_params(params, rules)
    with quant.fp8(rules):
      out = model.apply({"params": qparams}, features, ids)
    flat = traverse_util.flatten_dict(qparams)
    module_out = {}
    for path, (call, *_) in calls.items():
      x, *rest = call.args
      module_out[path] = quant.quantized_matmul(
          call.scheme, x, flat[(*path.split("/"), "weight")], *rest,
          out_dtype=call.output.dtype, **call.kwargs)
    return ref, out, calls, module_out

  return run(params, *batch)


def _weights(params: Any) -> dict[str, Any]:
  """Module path -> weight matrix (2-D or more: matmul weights, not norm gains)."""
  flat = traverse_util.flatten_dict(params)
  return {"/".join(k[:-1]): v for k, v in flat.items()
          if k[-1] == "weight" and len(v.shape) >= 2}


def _natural(path: str) -> list:
  """Sort key that puts layer_2 before layer_10."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _means(rows: list[dict[str, Any]], keys) -> dict[str, float]:
  return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def analyze(config: Config, params: Any, rules: quant.Rules | None = None, *,
            batch: int = 32, seed: int = 0, sample: Batch | None = None) -> dict[str, Any]:
  """The statistics report (a JSON-serialisable dict) for FP16 params, on `sample` (real
  requests: features and target semantic IDs) or else sample_batch(config, batch, seed)."""
  rules = rules or default_rules(config)
  weights = _weights(params)
  if any(isinstance(w, quant.QArray) for w in weights.values()):
    raise ValueError("analyze needs unquantized (FP16) params; this tree is FP8")
  sample = sample or sample_batch(config, batch, seed)
  ref, out, calls, module_out = fp8_run(config, params, rules, sample)
  weight_rows = [{"path": p, "shape": list(weights[p].shape), "scheme": rules.scheme(p),
                  **tensor_stats(weights[p])} for p in sorted(weights, key=_natural)]
  act_rows = []
  for path in sorted(calls, key=_natural):
    call = calls[path][0]
    x = call.args[0]
    act_rows.append({"path": path, "shape": list(x.shape), "scheme": call.scheme,
                     **tensor_stats(x), "sqnr_db": sqnr_db(call.output, module_out[path])})
  quantized = [r for r in weight_rows if r["scheme"] != "none"]
  return {
      "config": config.to_dict(),
      "rules": [list(r) for r in rules.rules],
      "batch": int(sample[1].shape[0]),
      "seed": seed,
      "weights": weight_rows,
      "activations": act_rows,
      "means": {"weights": _means(weight_rows, STATS),
                "quantized_weights": _means(quantized, STATS),
                "activations": _means(act_rows, STATS + ("sqnr_db",))},
      "logits": [{"level": j, "sqnr_db": sqnr_db(a, b), "cosine": cosine(a, b)}
                 for j, (a, b) in enumerate(zip(ref, out))],
  }


def format_table(report: dict[str, Any]) -> str:
  """One row per quantized module (its weight and its input activation), then the means."""
  weights = {r["path"]: r for r in report["weights"]}
  head = (f"{'module':<40} {'scheme':<11} {'W var':>9} {'W absmax':>9} {'W absp99':>9} "
          f"{'X var':>9} {'X absmax':>9} {'X absp99':>9} {'SQNR dB':>8}")
  lines = [head, "-" * len(head)]
  fmt = lambda r: " ".join(f"{r[k]:9.3g}" for k in STATS)
  for a in report["activations"]:
    lines.append(f"{a['path']:<40} {a['scheme']:<11} {fmt(weights[a['path']])} {fmt(a)} "
                 f"{a['sqnr_db']:8.2f}")
  m = report["means"]
  lines += ["-" * len(head),
            f"{'mean, quantized modules':<52} {fmt(m['quantized_weights'])} "
            f"{fmt(m['activations'])} {m['activations']['sqnr_db']:8.2f}",
            f"{'mean, all weight matrices':<52} {fmt(m['weights'])}", ""]
  lines += [f"logits level {r['level']}: SQNR {r['sqnr_db']:.2f} dB, cosine {r['cosine']:.5f}"
            for r in report["logits"]]
  return "\n".join(lines)


def plot(report: dict[str, Any], path: str) -> None:
  """The three statistics per quantized module, weights vs activations, in log scale."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  weights = {r["path"]: r for r in report["weights"]}
  acts = report["activations"]
  xs = np.arange(len(acts))
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
  for ax, stat, title in zip(axes, STATS, ("Variance", "AbsMax", "AbsP99")):
    for label, rows, color in (("weights", [weights[a["path"]] for a in acts], "tab:blue"),
                               ("activations", acts, "tab:orange")):
      values = [r[stat] for r in rows]
      ax.plot(xs, values, "o", ms=4, color=color, label=label)
      ax.axhline(np.mean(values), color=color, ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("quantized module (by layer, then name)")
    ax.grid(True, which="major", alpha=0.3)
  axes[0].legend()
  fig.suptitle("Weights vs activations entering the FP8 modules (dashed: means)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
