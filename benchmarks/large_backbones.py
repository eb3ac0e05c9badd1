"""Training the large keras.applications networks through the driver: vanilla against Cut-MixMo.

    python benchmarks/large_backbones.py --cifar_dir=<unpacked CIFAR-10 folder> [--steps=60]
        [--networks=ResNet50,MobileNetV3Small,EfficientNetV2B0] [--train_subset=4096] [--json=PATH]

The tests wrap these backbones (tests/test_backbone.py: mask grid, folding, `.keras` round trip)
but do not train them: too slow for the suite. This script does, one fresh process per run:
`python -m mixmo_tf.train --model=keras_applications:<name>` (random initial weights) on the real
CIFAR-10 folder at 32 px (the smallest size these networks accept), float32, batch 64 counted with
repetitions, `--max_steps` steps over a `--train_subset` of the training set, then the whole
10,000-image test set through the one prediction path. For vanilla (M = 1, b = 1) and Cut-MixMo
(M = 2, b = 2) it prints the trainable parameters, the steady training images/s (median of the
progress windows after the first, which holds the compilation; results.json's figure includes
it), the training loss of each progress window and the test Top-1 and NLL: evidence that the
wrapped networks train through the driver, and what MixMo costs on them, not accuracy figures
(60 steps from random weights; BN statistics in inference mode are still near their start).
`--json` writes every run's figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The progress line: step, window loss, window images/s.
WINDOW = re.compile(r"\] step (\d+)/\d+ epoch \d+: loss ([\d.]+),.* ([\d.]+) img/s")
KINDS = {"vanilla": ["--num_members=1", "--batch_repetitions=1"],
         "cutmixmo": ["--num_members=2", "--batch_repetitions=2", "--mixing=cutmix"]}


def run(network: str, kind: str, args, work_dir: str) -> dict:
  """One driver run in its own process; its results.json and history.json, summarised."""
  out = os.path.join(work_dir, f"{network}_{kind}")
  command = [sys.executable, "-m", "mixmo_tf.train", f"--model=keras_applications:{network}",
             "--dataset=folder", f"--data_dir={args.cifar_dir}", "--image_size=32",
             f"--train_subset={args.train_subset}", "--batch_size=64", "--epochs=1",
             "--lr_decay_epochs=1", f"--max_steps={args.steps}", "--precision=float32",
             "--base_learning_rate=0.05", f"--log_every_steps={max(1, args.steps // 3)}",
             f"--output_dir={out}",
             *KINDS[kind]]
  done = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  if done.returncode:
    raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
  windows = [(float(m.group(2)), float(m.group(3)))
             for m in WINDOW.finditer(done.stdout + done.stderr)]
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(out, "history.json")) as f:
    history = json.load(f)
  import keras  # Counted after the run, from its own model file.
  import mixmo_tf  # noqa: F401  (registers the custom layers for safe-mode loading)
  model = keras.models.load_model(os.path.join(out, "model.keras"), safe_mode=True)
  params = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
  return {"network": network, "kind": kind, "params": params, "steps": history[-1]["step"],
          "train_img_s": results.get("train_images_per_second"),
          "steady_img_s": (statistics.median(w[1] for w in windows[1:]) if len(windows) > 1
                           else None),
          "window_losses": [w[0] for w in windows],
          "top1": results.get("top1"),
          "nll": results.get("nll"), "engine": results.get("engine"),
          "backend": results.get("backend")}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cifar_dir", required=True)
  parser.add_argument("--networks", default="ResNet50,MobileNetV3Small,EfficientNetV2B0")
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--train_subset", type=int, default=4096)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  if not os.path.isdir(os.path.join(args.cifar_dir, "train")):
    raise SystemExit(f"--cifar_dir={args.cifar_dir!r} has no train/ folder.")
  sys.path.insert(0, REPO)
  from mixmo_tf import runtime
  print(f"# {datetime.date.today()}; CPU {runtime.cpu_model()}, {os.cpu_count()} cores; "
        f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND', 'tensorflow')}", flush=True)
  rows = []
  with tempfile.TemporaryDirectory() as work_dir:
    for network in args.networks.split(","):
      for kind in KINDS:
        row = run(network, kind, args, work_dir)
        rows.append(row)
        print(f"{network:18s} {kind:9s} params {row['params']:>11,d}  steps {row['steps']}  "
              f"train {row['steady_img_s']:6.1f} img/s steady ({row['train_img_s']:.1f} with "
              f"compilation)  loss by window "
              f"{' -> '.join(f'{l:.2f}' for l in row['window_losses'])}  "
              f"top1 {row['top1']:.4f}  nll {row['nll']:.3f}  ({row['engine']}, "
              f"{row['backend']})", flush=True)
      vanilla, mixmo = rows[-2], rows[-1]
      print(f"{network:18s} Cut-MixMo / vanilla: params {mixmo['params'] / vanilla['params']:.3f}, "
            f"train time per image {vanilla['steady_img_s'] / mixmo['steady_img_s']:.3f}",
            flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"cpu": runtime.cpu_model(), "date": str(datetime.date.today()), "runs": rows},
                f, indent=1)


if __name__ == "__main__":
  main()
