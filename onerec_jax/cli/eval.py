"""FP16 vs FP8 recommendation quality (recall, NDCG, top-k overlap, logits SQNR) on the
synthetic test split; writes JSON and prints markdown tables.

CHECKPOINT is the PyTorch-format FP16 source (default: the shipped demo) or a converted FP16
checkpoint; the test split is regenerated from the data.json written beside the trained
model by scripts/train_demo.py (--data to point elsewhere). FP8 runs from the same FP16
weights with the paper's rules, and again with a deliberately bad per-tensor scheme.
"""

import argparse
import json
import pathlib

from onerec_jax import checkpoint, data, evaluate

DATA_NAME = "data.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("checkpoint", nargs="?", type=pathlib.Path,
                      default=checkpoint.DEMO_SOURCE,
                      help="PyTorch-format FP16 source or converted FP16 checkpoint "
                           "(default: the shipped demo)")
  parser.add_argument("--data", type=pathlib.Path,
                      help=f"data generator options (default: CHECKPOINT/{DATA_NAME})")
  parser.add_argument("--beam-width", type=int, default=64,
                      help="items ranked per user, >= 50 (default %(default)s)")
  parser.add_argument("--batch-size", type=int, default=64, help="users per beam search")
  parser.add_argument("--last-cut-only", action="store_true",
                      help="one request per test user (its last target) instead of one per "
                           "cut point")
  parser.add_argument("--max-requests", type=int, help="evaluate only the first N requests")
  parser.add_argument("--schemes", nargs="+", choices=evaluate.SCHEMES,
                      default=list(evaluate.SCHEMES), help="FP8 schemes to evaluate")
  parser.add_argument("--output", type=pathlib.Path, help="write the JSON report here")
  parser.add_argument("--markdown", type=pathlib.Path, help="write the markdown tables here")


def load_fp16(path: pathlib.Path):
  """(config, FP16 params) from a converted checkpoint or a PyTorch-format source."""
  if (path / checkpoint.store.METADATA_NAME).exists():
    if checkpoint.load_rules(path) is not None:
      raise checkpoint.CheckpointError(f"{path} is FP8; eval needs the FP16 checkpoint")
    return checkpoint.load(path)
  config = checkpoint.read_config(path)
  return config, checkpoint.torch_to_jax(checkpoint.open_source(path), config)


def run(args: argparse.Namespace) -> int:
  config, params = load_fp16(args.checkpoint)
  data_path = args.data or args.checkpoint / DATA_NAME
  options = data.DataConfig(**json.loads(data_path.read_text()))
  dataset = data.generate(options, config)
  report = evaluate.evaluate(params, config, dataset, beam_width=args.beam_width,
                             batch_size=args.batch_size, every_cut=not args.last_cut_only,
                             max_requests=args.max_requests,
                             schemes=tuple(args.schemes))
  report = {"checkpoint": str(args.checkpoint), "data": options.to_dict(), **report}
  text = evaluate.markdown(report)
  print(text)
  if args.output:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
  if args.markdown:
    args.markdown.write_text(text + "\n")
  return 0
