"""Near-OOD benchmark on real CIFAR-10: classes 0-4 in-distribution, classes 5-9 out.

    python benchmarks/near_ood.py [--cifar_dir=/tmp/cifar/cifar10] [--epochs=3] \
        [--work_dir=/tmp/near_ood] [--out=near_ood.json]

Builds two class-folder trees of symlinks under --work_dir: `in/{train,test}/<class>` with the
first five classes (airplane ... deer) and `ood/test/<class>` with the test images of the last
five (dog ... truck). Trains vanilla (M = 1, b = 1) and Cut-MixMo (M = 2, b = 2) WRN-28-1 on `in`
with the cpu-f10 settings (flags/cpu/f10_wrn281_vanilla_bar1.flags and
f10_wrn281_cutmixmo_bar2.flags) for --epochs, the 10-epoch milestones 4 / 8 / 9 scaled to them;
evaluates each run with --ood=folder:<ood tree> (docs/method.md §17); prints one Markdown table
(Top-1 and, per OOD score, AUROC / AUPR-in / AUPR-out / FPR@95) and writes it all to --out as
JSON. A benchmark, not a test: a run that already holds results.json is evaluated, not retrained.
Training is `mixmo_tf.training.run` (the engine --engine=auto picks for KERAS_BACKEND, as
`python -m mixmo_tf.train`), evaluation `mixmo_tf.evaluation.runs.evaluate_run` (as
`python -m mixmo_tf.evaluate --ood=folder:...`).
"""

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from absl import flags, logging  # noqa: E402

from mixmo_tf import config as config_lib  # noqa: E402
from mixmo_tf import training  # noqa: E402
from mixmo_tf.evaluation import runs, tables  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RUNS = {"vanilla (M = 1, b = 1)": "f10_wrn281_vanilla_bar1",
        "Cut-MixMo (M = 2, b = 2)": "f10_wrn281_cutmixmo_bar2"}
F10_EPOCHS, F10_MILESTONES = 10, (4, 8, 9)


def link_trees(cifar_dir: str, work_dir: str):
  """(in-distribution root, OOD root): symlinked class folders, classes split by sorted name."""
  classes = sorted(e.name for e in os.scandir(os.path.join(cifar_dir, "train")) if e.is_dir())
  if len(classes) != 10:
    raise ValueError(f"{cifar_dir}/train holds {len(classes)} class folders, expected CIFAR-10's "
                     "10.")
  links = [("in", split, c) for split in ("train", "test") for c in classes[:5]]
  links += [("ood", "test", c) for c in classes[5:]]
  for tree, split, name in links:
    target = os.path.abspath(os.path.join(cifar_dir, split, name))
    link = os.path.join(work_dir, tree, split, name)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.islink(link) and os.readlink(link) != target:
      os.remove(link)
    if not os.path.islink(link):
      os.symlink(target, link)
  return os.path.join(work_dir, "in"), os.path.join(work_dir, "ood")


def scaled_milestones(epochs: int):
  """The cpu-f10 LR milestones (4, 8, 9 of 10 epochs) at the same fractions of `epochs`, distinct
  and after the warmup epoch: 3 epochs -> (2, 3), 2 -> (2,)."""
  return tuple(sorted({max(2, round(m * epochs / F10_EPOCHS)) for m in F10_MILESTONES
                       if epochs >= 2}))


def flagfile_config(name: str) -> config_lib.Config:
  """The Config that `--flagfile=flags/cpu/<name>.flags` gives the training driver."""
  values = flags.FlagValues()
  config_lib.define_flags(values)
  values(["near_ood", f"--flagfile={os.path.join(REPO, 'flags', 'cpu', name + '.flags')}"])
  return config_lib.config_from_flags(values)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cifar_dir", default="/tmp/cifar/cifar10",
                      help="Unpacked CIFAR-10 JPEG tree (train/<class>, test/<class>).")
  parser.add_argument("--work_dir", default="/tmp/near_ood", help="Symlink trees and runs.")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--train_subset", type=int, default=0, help="0: all 25,000 images.")
  parser.add_argument("--out", default="near_ood.json", help="Where to write the JSON.")
  args = parser.parse_args()
  logging.set_verbosity(logging.INFO)  # The driver's progress lines (no absl app here).
  if args.epochs < 1:
    raise SystemExit(f"--epochs={args.epochs} is not valid; expected an integer >= 1.")
  start = time.time()
  in_root, ood_root = link_trees(args.cifar_dir, args.work_dir)
  ood_name = f"folder:{ood_root}"
  results, top1 = {}, {}
  for label, flagfile in RUNS.items():
    run_dir = os.path.join(args.work_dir, "runs", f"{flagfile}_e{args.epochs}"
                           f"_s{args.train_subset}")
    config = dataclasses.replace(
        flagfile_config(flagfile), data_dir=in_root, output_dir=run_dir, epochs=args.epochs,
        lr_decay_epochs=scaled_milestones(args.epochs), train_subset=args.train_subset,
        log_every_steps=100).validate()
    if not os.path.exists(os.path.join(run_dir, "results.json")):
      training.run(config)
    with open(os.path.join(run_dir, "results.json")) as f:
      trained = json.load(f)
    metrics = runs.evaluate_run(run_dir, ood_names=(ood_name,))
    top1[label] = metrics["top1"]
    results[label] = {"run_dir": run_dir, "flagfile": f"flags/cpu/{flagfile}.flags",
                      "top1": metrics["top1"], "nll": metrics["nll"], "ood": metrics["ood"],
                      "train_seconds": trained.get("train_seconds"),
                      "lr_decay_epochs": list(config.lr_decay_epochs)}
  table = tables.ood_table({label: r["ood"] for label, r in results.items()}, top1)
  print(table, end="")
  report = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "epochs": args.epochs, "train_subset": args.train_subset,
            "in_distribution": in_root, "ood_set": ood_name, "machine": platform.processor(),
            "wall_seconds": time.time() - start, "runs": results, "table": table}
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wall time {report['wall_seconds'] / 60:.1f} min; JSON in {args.out}")


if __name__ == "__main__":
  main()
