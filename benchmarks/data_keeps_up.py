"""Does the data keep up? A real run's training images/s against the step alone, per engine.

    python benchmarks/data_keeps_up.py --cifar_dir=<unpacked CIFAR-10 folder> [--steps=250]

For each engine (the tf.distribute engine and the Keras engine on TensorFlow, the Keras engine on
JAX; `--engines` picks), in one sitting, each in its own process:
  synthetic  the train step on one fixed batch already in memory (`throughput.train_step_fn`):
             what the step costs without any input pipeline;
  real       `python -m mixmo_tf.train` on the real CIFAR-10 folder with the default data path
             (decoded once into memory, the epoch order, the engine's own feeding), WRN-28-1,
             MixMo M = 2, float32: its steady-state images/s, read off the progress lines after
             the first window (compilation), excluding evaluation and checkpoints (none within
             the steps timed).
Prints both and real / synthetic (the target: >= 0.95); --json prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = {"custom-tensorflow": ("custom", "tensorflow"), "keras-tensorflow": ("keras", "tensorflow"),
           "keras-jax": ("keras", "jax")}
WINDOW = re.compile(r"\] step (\d+)/\d+ epoch \d+: .* ([\d.]+) img/s")

SYNTHETIC = """
import json, sys, tempfile, time
sys.path.insert(0, {repo!r}); sys.path.insert(0, {bench!r})
import mixmo_tf
import throughput
config = throughput.bench_config(tempfile.mkdtemp(), {engine!r}, width=1, members=2)
step = throughput.train_step_fn(config, throughput.bench_info())
for _ in range(5):
  step()
start = time.perf_counter()
for _ in range({steps}):
  step()
print("SYNTHETIC", json.dumps({{"img_s": {steps} * 64 / (time.perf_counter() - start)}}))
"""


def synthetic_rate(engine: str, backend: str, steps: int) -> float:
  code = SYNTHETIC.format(repo=REPO, bench=os.path.join(REPO, "benchmarks"), engine=engine,
                          steps=steps)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3"))
  line = [l for l in out.stdout.splitlines() if l.startswith("SYNTHETIC")]
  if out.returncode or not line:
    raise SystemExit(out.stdout[-2000:] + out.stderr[-3000:])
  return json.loads(line[-1].split(" ", 1)[1])["img_s"]


def real_rate(engine: str, backend: str, cifar_dir: str, steps: int, window: int) -> float:
  out_dir = tempfile.mkdtemp()
  command = [sys.executable, "-m", "mixmo_tf.train", "--dataset=folder", f"--data_dir={cifar_dir}",
             "--depth=28", "--width=1", "--num_members=2", "--mixing=cutmix", "--batch_size=64",
             "--batch_repetitions=2", "--epochs=1", "--lr_decay_epochs=1", "--precision=float32",
             f"--max_steps={steps}", f"--log_every_steps={window}", "--eval_frequency=100",
             f"--engine={engine}", f"--output_dir={out_dir}"]
  out = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3"))
  if out.returncode:
    raise SystemExit(out.stderr[-3000:])
  windows = [(int(s), float(r)) for s, r in WINDOW.findall(out.stderr)]
  steady = [rate for step, rate in windows if step > window and step % window == 0]
  if not steady:
    raise SystemExit(f"no steady-state window in {windows}")
  return statistics.median(steady)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cifar_dir", required=True)
  parser.add_argument("--steps", type=int, default=250)
  parser.add_argument("--window", type=int, default=50)
  parser.add_argument("--engines", default=",".join(ENGINES))
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  sys.path.insert(0, REPO)
  from mixmo_tf import runtime
  report = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_model": runtime.cpu_model()}
  print(f"{report['date']} CPU {report['cpu_model']}; WRN-28-1, MixMo M = 2, batch 64, float32",
        flush=True)
  for name in args.engines.split(","):
    engine, backend = ENGINES[name]
    synthetic = synthetic_rate(engine, backend, args.window * 2)
    real = real_rate(engine, backend, args.cifar_dir, args.steps, args.window)
    report[name] = dict(synthetic_img_s=synthetic, real_img_s=real, ratio=real / synthetic)
    print(f"{name}: synthetic step {synthetic:.0f} img/s, real run {real:.0f} img/s, "
          f"real / synthetic {real / synthetic:.3f}", flush=True)
  if args.json:
    print(json.dumps(report))


if __name__ == "__main__":
  main()
