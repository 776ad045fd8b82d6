"""The accuracy-efficiency frontier from `onerec-jax eval` reports, one per model: writes
the JSON (a top-level "summary" of one row per model and recipe), the markdown table and
the figure (recall@10 change with its interval against weight bytes; with --kernels, a
GPU benchmark from scripts/bench_frontier.py, also against the measured GEMM time of the
recipes that have kernels).

  python scripts/frontier.py --report demo=bench/results/eval_frontier_demo.json \
      --report movielens=bench/results/eval_frontier_movielens.json \
      --out bench/results/frontier_cpu.json --markdown docs/frontier_table.md \
      --figure docs/frontier.png [--kernels bench/results/frontier_w4a8_h200.json]
"""

import argparse
import json
import pathlib

from onerec_jax.lab.evaluate import LOSSLESS, cheapest_lossless, summary_rows

# The GEMM kernel each recipe's routed experts run on a GPU, as bench_frontier.py names
# it; recipes without one have no latency (docs/frontier.md). Timed at the weight-read
# bound 32-token step, where every kernel of the list ran in one benchmark run.
KERNEL_OF = {"fp8": "pallas_fp8", "int8": "pallas_int8", "int4_w4a8": "triton_int4_w4a8",
             "mxfp4_w4a8": "triton_mxfp4_w4a8", "int4_w4a16": "triton_int4_w4a16"}
LATENCY_SHAPE = "moe4b.experts.gate_up.t32"


def markdown(rows: list[dict], reports: dict[str, dict]) -> str:
  lines = []
  for model, report in reports.items():
    mine = [r for r in rows if r["model"] == model]
    wide = next(k for k in mine[0] if k.startswith("overlap_w"))
    fp16 = report["fp16"]["recall@10"]
    lines += [f"**{model}**: {report['test_requests']} test requests of "
              f"{report['test_users']} users, FP16 recall@10 {fp16:.4f}; top-"
              f"{wide[len('overlap_w'):]} overlap on "
              f"{report['wide_requests'] or report['test_requests']} requests.", "",
              f"| recipe | weights MB | recall@10 change | 95% interval | verdict | "
              f"top-{wide[len('overlap_w'):]} overlap | top-10 overlap | logits SQNR dB |",
              "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    for r in sorted(mine, key=lambda r: -r["weight_bytes"]):
      rec = report["recipes"].get(r["scheme"])
      sqnr = ", ".join(f"{x:.1f}" for x in rec["logits_sqnr_db"]) if rec else ""
      top10 = f"{100 * rec['overlap@10']:.1f}%" if rec else ""
      lines.append(
          f"| {r['scheme']} | {r['weight_bytes'] / 1e6:.2f} | "
          f"{100 * r['recall10_change']:+.2f}% | [{100 * r['ci_low']:+.2f}%, "
          f"{100 * r['ci_high']:+.2f}%] | {r['verdict']} | "
          f"{100 * r[wide]:.1f}% | {top10} | {sqnr} |")
    best = cheapest_lossless(mine)
    lines += ["", f"Cheapest lossless recipe on {model}: **{best['scheme']}** "
              f"({best['weight_bytes'] / 1e6:.2f} MB)"
              + (" (no quantized recipe's interval lies within ±0.5%)."
                 if best["scheme"] == "fp16" else "."), ""]
  return "\n".join(lines)


def _spread_x(rows: list[dict]) -> list[float]:
  """Weight MB per row, rows within 3% of each other's bytes spread apart (log axis) so
  that their markers and labels do not sit on one another."""
  xs = [r["weight_bytes"] / 1e6 for r in rows]
  out = list(xs)
  for i, x in enumerate(xs):
    near = [j for j, y in enumerate(xs) if abs(y / x - 1) < 0.03]
    out[i] = x * 1.025 ** (near.index(i) - (len(near) - 1) / 2)
  return out


def figure(rows: list[dict], path: str, kernels: dict | None) -> None:
  """Per model: the recall@10 change with its interval (top) and the overlap with FP16 at
  the widest beam (bottom) against weight bytes; with kernels, a GEMM time panel."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  models = list(dict.fromkeys(r["model"] for r in rows))
  cols = len(models) + (1 if kernels else 0)
  fig, axes = plt.subplots(2, cols, figsize=(6.5 * cols, 9), squeeze=False)
  colors = {"reference": "tab:green", "lossless": "tab:green", "loss": "tab:red",
            "gain": "tab:blue", "unresolved": "tab:orange"}
  for col, model in enumerate(models):
    mine = [r for r in rows if r["model"] == model]
    wide = next(k for k in mine[0] if k.startswith("overlap_w"))
    top, bottom = axes[0][col], axes[1][col]
    for r, x in zip(mine, _spread_x(mine)):
      y, c = 100 * r["recall10_change"], colors[r["verdict"]]
      top.errorbar(x, y, yerr=[[y - 100 * r["ci_low"]], [100 * r["ci_high"] - y]],
                   fmt="o", color=c, capsize=3)
      top.annotate(r["scheme"], (x, y), textcoords="offset points", xytext=(4, 3),
                   fontsize=7, rotation=30)
      bottom.plot(x, 100 * r[wide], "o", color=c)
      bottom.annotate(r["scheme"], (x, 100 * r[wide]), textcoords="offset points",
                      xytext=(4, 3), fontsize=7, rotation=30)
    top.axhspan(-100 * LOSSLESS, 100 * LOSSLESS, color="tab:green", alpha=0.12)
    top.set_ylabel("recall@10 change vs FP16 (%), 95% interval")
    top.set_title(f"{model}: green lossless, red loss, orange unresolved")
    bottom.set_ylabel(f"top-{wide[len('overlap_w'):]} overlap with FP16 (%)")
    for ax in (top, bottom):
      ax.set_xscale("log")
      ax.set_xlabel("weight bytes (MB, log)")
      ax.grid(True, alpha=0.3)
  if kernels:
    ax = axes[0][-1]
    shape = next(r for r in kernels["rows"] if r["name"] == LATENCY_SHAPE)
    for recipe, col in KERNEL_OF.items():
      if col in shape["us"]:
        ax.bar(recipe, shape["us"][col])
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_ylabel(f"GEMM device time at {LATENCY_SHAPE} (us)")
    ax.set_title(f"{kernels['device']} at {kernels['git_commit'][:7]}")
    axes[1][-1].axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--report", action="append", required=True,
                      help="MODEL=PATH of an `onerec-jax eval --output` report")
  parser.add_argument("--out", required=True, help="frontier JSON")
  parser.add_argument("--markdown", required=True)
  parser.add_argument("--figure", required=True)
  parser.add_argument("--kernels", help="a scripts/bench_frontier.py GPU result")
  args = parser.parse_args()
  reports = {}
  for spec in args.report:
    model, _, path = spec.partition("=")
    reports[model] = json.loads(pathlib.Path(path).read_text())
  rows = [{"model": model, **row} for model, report in reports.items()
          for row in summary_rows(report)]
  kernels = json.loads(pathlib.Path(args.kernels).read_text()) if args.kernels else None
  if kernels:
    shape = next(r for r in kernels["rows"] if r["name"] == LATENCY_SHAPE)
    for row in rows:
      if KERNEL_OF.get(row["scheme"]) in shape["us"]:
        row[f"gemm_us_{LATENCY_SHAPE}"] = shape["us"][KERNEL_OF[row["scheme"]]]
  result = {"summary": rows,
            "cheapest_lossless": {m: cheapest_lossless([r for r in rows if r["model"] == m])
                                  ["scheme"] for m in reports},
            "reports": {m: args_path for m, args_path in
                        (s.partition("=")[::2] for s in args.report)},
            **({"kernels": args.kernels} if kernels else {})}
  pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
  pathlib.Path(args.markdown).write_text(markdown(rows, reports))
  figure(rows, args.figure, kernels)
  print(markdown(rows, reports))


if __name__ == "__main__":
  main()
