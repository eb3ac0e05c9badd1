"""MixMo / vanilla train-step time ratio over many runs, per engine: median, spread, bootstrap bound.

    python benchmarks/step_ratio.py [--runs=10] [--steps=300] [--block=10]
        [--engines=custom-tensorflow,keras-tensorflow,keras-jax] [--depth=28 --width=1]
        [--json=PATH]

One run is one fresh process that builds vanilla (M = 1, b = 1) and Cut-MixMo (M = 2, b = 2)
WRN-28-1 at batch 64 (counted with repetitions), float32, with the engine's own train step on a
fixed synthetic batch (`throughput.train_step_fn`: the tf.distribute engine's compiled step, or
`MixMoTrainer.train_on_batch`, jit-compiled on JAX), warms both up, then times `--steps` steps of
each, interleaved in blocks of `--block` (the order within a pair of blocks alternating), so that
machine noise hits both alike. The run's ratio is MixMo's total step time over vanilla's. Runs go
round-robin over the engines (run 1 of each, then run 2 of each, ...), one process at a time.

Per engine it prints the median ratio, the spread (min - max) and the upper end of a bootstrap
90% interval of the median (10,000 resamples of the runs, seeded): the targets are median <= 1.03
and bound <= 1.05. `--json` writes every run's figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = {"custom-tensorflow": ("custom", "tensorflow"),
           "keras-tensorflow": ("keras", "tensorflow"), "keras-jax": ("keras", "jax")}


def child(args) -> None:
  """One run in this process: prints one JSON line of its figures."""
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  sys.path.insert(0, REPO)
  import mixmo_tf  # noqa: F401  (the TensorFlow environment, oneDNN on, before TensorFlow loads)
  import throughput
  from mixmo_tf import runtime
  engine = ENGINES[args.child][0]
  info = throughput.bench_info()
  fns = {name: throughput.train_step_fn(throughput.bench_config(
      os.devnull, engine, args.width, members, depth=args.depth), info)
         for name, members in (("vanilla", 1), ("mixmo", 2))}
  for fn in fns.values():  # Trace / compile, then a few steps.
    for _ in range(args.warmup):
      fn()
  totals = {name: 0.0 for name in fns}
  block_ratios = []
  for block in range(args.steps // args.block):
    order = list(fns) if block % 2 == 0 else list(fns)[::-1]
    seconds = {}
    for name in order:
      start = time.perf_counter()
      for _ in range(args.block):
        fns[name]()
      seconds[name] = time.perf_counter() - start
      totals[name] += seconds[name]
    block_ratios.append(seconds["mixmo"] / seconds["vanilla"])
  steps = args.block * (args.steps // args.block)
  print(json.dumps({"engine": args.child, "cpu": runtime.cpu_model(),
                    "onednn": runtime.onednn_enabled(), "steps": steps,
                    "vanilla_ms": 1000 * totals["vanilla"] / steps,
                    "mixmo_ms": 1000 * totals["mixmo"] / steps,
                    "ratio": totals["mixmo"] / totals["vanilla"],
                    "block_ratio_median": statistics.median(block_ratios)}), flush=True)


def bootstrap_upper(values, resamples=10_000, level=0.90, seed=0) -> float:
  """Upper end of the bootstrap `level` interval of the median of `values` (percentile method)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  samples = rng.choice(np.asarray(values), size=(resamples, len(values)), replace=True)
  return float(np.quantile(np.median(samples, axis=1), 0.5 + level / 2))


def summary(ratios):
  return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
          "bootstrap90_upper": bootstrap_upper(ratios), "runs": len(ratios)}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", type=int, default=10)
  parser.add_argument("--steps", type=int, default=300, help="Timed steps of each network.")
  parser.add_argument("--block", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--engines", default=",".join(ENGINES))
  parser.add_argument("--depth", type=int, default=28)
  parser.add_argument("--width", type=int, default=1)
  parser.add_argument("--json", default="")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(args)
  engines = args.engines.split(",")
  unknown = [e for e in engines if e not in ENGINES]
  if unknown or args.steps < args.block or args.runs < 1:
    parser.error(f"--engines must name some of {', '.join(ENGINES)} (got {unknown}); "
                 "--steps >= --block; --runs >= 1")
  print(f"# {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; WRN-"
        f"{args.depth}-{args.width}, batch 64, float32; {args.runs} runs x {args.steps} steps "
        f"of each network, blocks of {args.block}", flush=True)
  runs = {e: [] for e in engines}
  for i in range(args.runs):
    for engine in engines:
      env = dict(os.environ, KERAS_BACKEND=ENGINES[engine][1], TF_CPP_MIN_LOG_LEVEL="3")
      argv = [sys.executable, __file__, f"--child={engine}", f"--steps={args.steps}",
              f"--block={args.block}", f"--warmup={args.warmup}", f"--depth={args.depth}",
              f"--width={args.width}"]
      out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
      lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
      if out.returncode or not lines:
        sys.exit(f"run {i + 1} of {engine} failed:\n{out.stderr[-3000:]}")
      figures = json.loads(lines[-1])
      runs[engine].append(figures)
      print(f"run {i + 1:2d} {engine:17s} vanilla {figures['vanilla_ms']:7.1f} ms  MixMo "
            f"{figures['mixmo_ms']:7.1f} ms  ratio {figures['ratio']:.3f}  (CPU "
            f"{figures['cpu']}, oneDNN {'on' if figures['onednn'] else 'off'})", flush=True)
  results = {}
  print(f"{'engine':18s}{'median':>8s}{'min':>8s}{'max':>8s}{'boot90 up':>11s}")
  for engine, figures in runs.items():
    s = summary([f["ratio"] for f in figures])
    results[engine] = dict(s, runs=figures)
    print(f"{engine:18s}{s['median']:8.3f}{s['min']:8.3f}{s['max']:8.3f}"
          f"{s['bootstrap90_upper']:11.3f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
