"""FP16 vs FP8 recommendation quality (recall, NDCG, top-k overlap, logits SQNR) on the
synthetic test split; writes JSON and prints markdown tables.

CHECKPOINT is the unquantized model, a PyTorch-format source or a converted FP16
checkpoint (default: the shipped demo); the test split is regenerated from the data.json
written beside the trained model by scripts/train_demo.py (--data to point elsewhere).
Each FP8 recipe runs from the same FP16 weights: "fp8", the paper's rules, and
"per_tensor", a deliberately bad scheme that shows the evaluation can tell them apart.
"""

import argparse
import json
import pathlib

from onerec_jax import checkpoint
from onerec_jax.cli._paths import writable_file
from onerec_jax.errors import InputError
from onerec_jax.lab import data, evaluate

DATA_NAME = "data.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("checkpoint", nargs="?", type=pathlib.Path,
                      help="PyTorch-format FP16 source or converted FP16 checkpoint "
                           "(default: the shipped demo)")
  parser.add_argument("--data", type=pathlib.Path,
                      help=f"data generator options (default: CHECKPOINT/{DATA_NAME})")
  parser.add_argument("--beam-width", type=int, default=64,
                      help="items ranked per user, >= 50")
  parser.add_argument("--batch-size", type=int, default=64, help="users per beam search")
  parser.add_argument("--last-cut-only", action="store_true",
                      help="one request per test user (its last target) instead of one per "
                           "cut point")
  parser.add_argument("--max-requests", type=int, help="evaluate only the first N requests")
  parser.add_argument("--recipes", nargs="+", choices=evaluate.RECIPES,
                      default=list(evaluate.RECIPES),
                      help="FP8 recipes to evaluate")
  parser.add_argument("--output", type=pathlib.Path, help="write the JSON report here")
  parser.add_argument("--markdown", type=pathlib.Path, help="write the markdown tables here")


def _data_options(args):
  path = args.data or (args.checkpoint or checkpoint.DEMO_SOURCE) / DATA_NAME
  if not path.exists():
    raise InputError(f"{path}: data options not found (eval regenerates the test split "
                     f"from the data.json written by scripts/train_demo.py; --data names "
                     f"another)")
  try:
    return data.DataConfig(**json.loads(path.read_text()))
  except (ValueError, TypeError) as e:
    raise InputError(f"{path}: not data options ({e})") from None


def run(args: argparse.Namespace) -> int:
  if args.beam_width < max(evaluate.RECALL_AT):
    raise InputError(f"--beam-width {args.beam_width}: must be at least "
                     f"{max(evaluate.RECALL_AT)} for recall@{max(evaluate.RECALL_AT)}")
  for name in ("batch_size", "max_requests"):
    value = getattr(args, name)
    if value is not None and value < 1:
      raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
  output, markdown = writable_file(args.output), writable_file(args.markdown)
  if args.checkpoint is not None:
    checkpoint.read_config(args.checkpoint)  # a missing or unreadable model fails now
  options = _data_options(args)
  ckpt = checkpoint.load(args.checkpoint, unquantized=True)
  dataset = data.make_dataset(options, ckpt.config)
  report = evaluate.evaluate(ckpt.params, ckpt.config, dataset, beam_width=args.beam_width,
                             batch_size=args.batch_size, every_cut=not args.last_cut_only,
                             max_requests=args.max_requests, recipes=tuple(args.recipes))
  report = {"checkpoint": ckpt.source, "data": options.to_dict(), **report}
  text = evaluate.markdown(report)
  print(text)
  if output:
    output.write_text(json.dumps(report, indent=1))
  if markdown:
    markdown.write_text(text + "\n")
  return 0
