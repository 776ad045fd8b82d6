"""Trains the shipped demo model on the synthetic data (onerec_jax.lab.data) and exports it
into --out (default checkpoints/demo/, the PyTorch-format FP16 source that the demo and
`onerec-jax eval` read; the files are listed in onerec_jax.lab.train.write_model_folder).
The Orbax training state goes to --workdir (git-ignored out/ by default).
"""

import argparse
import pathlib
import time

from onerec_jax.checkpoint import DEMO_SOURCE
from onerec_jax.config import preset
from onerec_jax.lab import data, train


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", type=pathlib.Path, default=DEMO_SOURCE)
  parser.add_argument("--preset", default="demo")
  train.add_arguments(parser, train.TrainConfig(), "out/train_demo")
  args = parser.parse_args()
  tc = train.config_from_arguments(args, train.TrainConfig())

  options = data.DataConfig(seed=args.seed)
  t0 = time.perf_counter()
  dataset = data.make_dataset(options, preset(args.preset))
  train.train_and_write(args.out, dataset, options, tc, args.workdir,
                        time.perf_counter() - t0)


if __name__ == "__main__":
  main()
