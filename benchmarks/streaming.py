"""Data larger than memory: peak memory of a streamed run, and streaming's speed on real images.

    python benchmarks/streaming.py --work_dir=/tmp/streaming [--cifar_dir=<unpacked CIFAR-10>]

1. Memory (docs/method.md §9.1): a generated folder of `--count` random JPEGs at `--size` px
   (default 20,000 x 128 px: 983 MB decoded) and a tenth of it; a short run of the driver with
   --data_in_memory=false on each (subprocesses, one at a time). Prints each run's peak resident
   memory (`ru_maxrss` of the finished child) and the growth against the decoded size added: a
   streamed run does not hold the decoded set, so the growth stays far below it.
2. Speed: on the real CIFAR-10 folder, the same short run in memory and streamed (same sitting,
   alternating): training images/s of each (results.json), and their ratio.

Every figure is printed with the CPU model; `--json` prints one JSON object at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def make_folder(root: str, count: int, size: int, classes: int = 10, seed: int = 0) -> None:
  """`count` JPEGs of size x size (smooth random images, so they compress like photos) in
  root/train/<class>/ and a small root/test/<class>/; skipped when already there."""
  from PIL import Image
  marker = os.path.join(root, f".made_{count}_{size}")
  if os.path.exists(marker):
    return
  rng = np.random.default_rng(seed)
  for split, n in (("train", count), ("test", max(classes, count // 100))):
    for i in range(n):
      folder = os.path.join(root, split, f"c{i % classes}")
      os.makedirs(folder, exist_ok=True)
      coarse = rng.integers(0, 256, (size // 8, size // 8, 3)).astype(np.uint8)
      image = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
      image.save(os.path.join(folder, f"{i}.jpg"), quality=90)
  open(marker, "w").close()


def subset_folder(source: str, root: str, fraction: int) -> None:
  """root: symbolic links to every `fraction`-th training file of source (test files all)."""
  if os.path.exists(root):
    return
  for split in ("train", "test"):
    for cls in sorted(os.listdir(os.path.join(source, split))):
      os.makedirs(os.path.join(root, split, cls))
      files = sorted(os.listdir(os.path.join(source, split, cls)))
      for name in files[::fraction] if split == "train" else files:
        os.symlink(os.path.join(source, split, cls, name), os.path.join(root, split, cls, name))


def run_driver(args, out: str) -> dict:
  """One training run in a child process; (peak RSS in MiB, results.json)."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  command = [sys.executable, "-m", "mixmo_tf.train", f"--output_dir={out}", "--overwrite"] + args
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  start = time.time()
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
  if result.returncode:
    raise SystemExit(result.stderr[-3000:])
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: a run smaller than an earlier one
  # reads as the earlier peak, so the runs go smallest first.
  return dict(peak_mib=max(peak, before) / 1024, wall_s=time.time() - start,
              images_per_s=results["train_images_per_second"])


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--work_dir", default="/tmp/mixmo_streaming")
  parser.add_argument("--count", type=int, default=20000)
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--cifar_dir", default="", help="Unpacked CIFAR-10 folder (train/, test/).")
  parser.add_argument("--cifar_rounds", type=int, default=2)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  from mixmo_tf import runtime
  report = {"cpu_model": runtime.cpu_model(), "date": time.strftime("%Y-%m-%d")}
  print(f"CPU: {report['cpu_model']}", flush=True)

  full = os.path.join(args.work_dir, f"folder_{args.count}_{args.size}")
  tenth = full + "_tenth"
  make_folder(full, args.count, args.size)
  subset_folder(full, tenth, 10)
  decoded_mib = args.count * args.size * args.size * 3 / 2**20
  common = ["--dataset=folder", "--depth=10", "--width=1", "--num_members=2",
            "--batch_size=32", "--epochs=1", "--lr_decay_epochs=1", "--precision=float32",
            f"--max_steps={args.steps}", "--eval_frequency=100", "--data_in_memory=false"]
  memory = {}
  for name, root in (("tenth", tenth), ("full", full)):
    memory[name] = run_driver(common + [f"--data_dir={root}"],
                              os.path.join(args.work_dir, f"run_{name}"))
    print(f"streamed {name}: peak RSS {memory[name]['peak_mib']:.0f} MiB, "
          f"{memory[name]['wall_s']:.0f} s", flush=True)
  growth = memory["full"]["peak_mib"] - memory["tenth"]["peak_mib"]
  added = decoded_mib * 0.9
  print(f"decoded size added by the full folder: {added:.0f} MiB; peak RSS grew by {growth:.0f} "
        f"MiB ({100 * growth / added:.1f}% of it)", flush=True)
  report["memory"] = dict(memory, decoded_added_mib=added, growth_mib=growth,
                          growth_share=growth / added)

  if args.cifar_dir:
    speed = {"in_memory": [], "streamed": []}
    cifar = ["--dataset=folder", f"--data_dir={args.cifar_dir}", "--depth=28", "--width=1",
             "--num_members=2", "--batch_size=64", "--epochs=1", "--lr_decay_epochs=1",
             "--precision=float32", "--max_steps=200", "--eval_frequency=100",
             "--log_every_steps=1000"]
    for _ in range(args.cifar_rounds):
      for name, setting in (("in_memory", "true"), ("streamed", "false")):
        figures = run_driver(cifar + [f"--data_in_memory={setting}"],
                             os.path.join(args.work_dir, f"cifar_{name}"))
        speed[name].append(figures["images_per_s"])
        print(f"CIFAR-10 WRN-28-1 {name}: {figures['images_per_s']:.0f} img/s", flush=True)
    ratio = float(np.median(speed["streamed"]) / np.median(speed["in_memory"]))
    print(f"streamed / in memory (medians): {ratio:.3f}", flush=True)
    report["speed"] = dict(speed, ratio=ratio)
  if args.json:
    print(json.dumps(report))


if __name__ == "__main__":
  main()
