"""Trains the shipped demo model on the synthetic data (onerec_jax.data) and exports it.

Writes into --out (default checkpoints/demo/, the PyTorch-format FP16 source that the
demo and `onerec-jax eval` read):
  model.safetensors, config.json   the trained FP16 model (checkpoints/README.md)
  valid_items.npz                  item_ids [I], semantic_ids [I, levels] (generate
                                   --valid-items)
  contexts.npz                     a sample of test users' contexts (generate --contexts;
                                   request_ids are the user ids)
  data.json                        the DataConfig that regenerates the data (eval)
  train.json                       training options, time, loss curve, validation CE
The Orbax training state goes to --workdir (git-ignored out/ by default), started afresh
unless --resume.
"""

import argparse
import json
import pathlib
import shutil
import time

import numpy as np

from onerec_jax.lab import data, train
from onerec_jax import generate as gen
from onerec_jax.checkpoint import DEMO_SOURCE, export
from onerec_jax.config import preset

SAMPLE_USERS = 16


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", type=pathlib.Path, default=DEMO_SOURCE)
  parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("out/train_demo"))
  parser.add_argument("--preset", default="demo")
  defaults = train.TrainConfig()
  parser.add_argument("--steps", type=int, default=defaults.steps)
  parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
  parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
  parser.add_argument("--seed", type=int, default=0, help="data and initialisation seed")
  parser.add_argument("--resume", action="store_true",
                      help="continue from the latest training state in --workdir")
  args = parser.parse_args()
  if not args.resume:
    shutil.rmtree(args.workdir, ignore_errors=True)

  config = preset(args.preset)
  options = data.DataConfig(seed=args.seed)
  t0 = time.perf_counter()
  dataset = data.make_dataset(options, config)
  data_s = time.perf_counter() - t0
  tc = train.TrainConfig(steps=args.steps, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, seed=args.seed)
  t0 = time.perf_counter()
  params, log = train.train(dataset, tc, workdir=args.workdir)
  train_s = time.perf_counter() - t0
  val_ce = train.evaluate_loss(params, train.training_config(config), dataset, "val")

  export(train.to_fp16(params), config, args.out)
  np.savez(args.out / "valid_items.npz", item_ids=dataset.item_ids,
           semantic_ids=dataset.semantic_ids)
  users, cuts = dataset.examples("test")
  users, cuts = users[:SAMPLE_USERS], cuts[:SAMPLE_USERS]
  gen.save_contexts(args.out / "contexts.npz", dataset.features(users, cuts),
                    request_ids=users)
  (args.out / "data.json").write_text(json.dumps(options.to_dict(), indent=2))
  every = max(1, len(log) // 20)
  (args.out / "train.json").write_text(json.dumps({
      "train": tc.to_dict(), "examples": int(len(dataset.examples("train")[0])),
      "data_seconds": data_s, "train_seconds": train_s,
      "val_ce": [float(c) for c in val_ce],
      "log": [{k: l[k] for k in ("step", "loss", "ce", "max_load_ratio", "seconds")}
              for l in log[::every] + log[-1:]]}, indent=1))
  size = sum(f.stat().st_size for f in args.out.iterdir())
  print(f"trained {len(log)} steps in {train_s:.0f} s; final loss {log[-1]['loss']:.3f}, "
        f"val CE {np.round(val_ce, 3).tolist()}; wrote {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
  main()
