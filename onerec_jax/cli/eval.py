"""FP16 against quantized recipes: recommendation quality (recall, NDCG, bootstrap
intervals, top-k overlap at two beam widths, logits SQNR, weight bytes) on the test split;
writes JSON and prints markdown tables.

CHECKPOINT is the unquantized model, a PyTorch-format source or a converted FP16
checkpoint (default: the shipped demo); the test split is rebuilt from the data.json
written beside the trained model by scripts/train_demo.py or scripts/train_movielens.py
(--data to point elsewhere). Each recipe (onerec_jax.model.recipes, --recipes; the issue
calls them schemes) runs from the same FP16 weights.
"""

import argparse
import json
import pathlib

from onerec_jax import checkpoint
from onerec_jax.cli._data import data_options
from onerec_jax.cli._paths import writable_file
from onerec_jax.errors import InputError
from onerec_jax.lab import datasets, evaluate
from onerec_jax.model.recipes import RECIPES

def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("checkpoint", nargs="?", type=pathlib.Path,
                      help="PyTorch-format FP16 source or converted FP16 checkpoint "
                           "(default: the shipped demo)")
  parser.add_argument("--data", type=pathlib.Path,
                      help="dataset options (default: CHECKPOINT/data.json)")
  parser.add_argument("--beam-width", type=int, default=64,
                      help="items ranked per user, >= 50")
  parser.add_argument("--batch-size", type=int, default=64, help="users per beam search")
  parser.add_argument("--last-cut-only", action="store_true",
                      help="one request per test user (its last target) instead of one per "
                           "cut point")
  parser.add_argument("--max-requests", type=int,
                      help="evaluate N requests spread evenly over the test split")
  parser.add_argument("--recipes", nargs="+", choices=list(RECIPES),
                      default=list(evaluate.DEFAULT_RECIPES),
                      help="recipes to evaluate: " + "; ".join(
                          f"{r.name}: {r.about}" for r in RECIPES.values()))
  parser.add_argument("--wide-beam-width", type=int, default=512,
                      help="beam width of the wide-beam overlap")
  parser.add_argument("--wide-requests", type=int, default=256,
                      help="requests of the wide-beam overlap (0: none)")
  parser.add_argument("--bootstrap", type=int, default=2000,
                      help="bootstrap resamples of users for the intervals")
  parser.add_argument("--ablation-requests", type=int, default=1024,
                      help="requests of the FP8 one-rule-at-a-time ablation (0: none)")
  parser.add_argument("--output", type=pathlib.Path, help="write the JSON report here")
  parser.add_argument("--markdown", type=pathlib.Path, help="write the markdown tables here")


def run(args: argparse.Namespace) -> int:
  if args.beam_width < max(evaluate.RECALL_AT):
    raise InputError(f"--beam-width {args.beam_width}: must be at least "
                     f"{max(evaluate.RECALL_AT)} for recall@{max(evaluate.RECALL_AT)}")
  for name in ("batch_size", "max_requests", "wide_beam_width", "bootstrap"):
    value = getattr(args, name)
    if value is not None and value < 1:
      raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
  for name in ("wide_requests", "ablation_requests"):
    if getattr(args, name) < 0:
      raise InputError(f"--{name.replace('_', '-')} must be 0 or more, got "
                       f"{getattr(args, name)}")
  output, markdown = writable_file(args.output), writable_file(args.markdown)
  if args.checkpoint is not None:
    checkpoint.read_config(args.checkpoint)  # a missing or unreadable model fails now
  options = data_options(args.checkpoint, args.data)
  ckpt = checkpoint.load(args.checkpoint, unquantized=True)
  dataset = datasets.make(options, ckpt.config)
  report = evaluate.evaluate(ckpt.params, ckpt.config, dataset, beam_width=args.beam_width,
                             batch_size=args.batch_size, every_cut=not args.last_cut_only,
                             max_requests=args.max_requests, recipes=tuple(args.recipes),
                             wide_beam_width=args.wide_beam_width,
                             wide_requests=args.wide_requests, bootstrap=args.bootstrap,
                             ablation_requests=args.ablation_requests)
  report = {"checkpoint": ckpt.source, "data": options.to_dict(), **report}
  text = evaluate.markdown(report)
  print(text)
  if output:
    output.write_text(json.dumps(report, indent=1))
  if markdown:
    markdown.write_text(text + "\n")
  return 0
