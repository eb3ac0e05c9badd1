"""Throughput benchmark: is MixMo an ensemble "for free"? Prints images/s and ratios in one run.

    python benchmarks/throughput.py [--quick] [--cifar_dir=DIR] [--precision=float32]

(a) the real train step (repetition, augmentation, masks, forward, backward, SGD), vanilla vs MixMo
    M = 2 at equal batch (64, counted with repetitions), WRN-28-1 / 28-2 / 28-10, XLA off and on;
(b) inference, batch 256: vanilla, MixMo M = 2 (stems folded, and unfolded) and a deep ensemble
    of 2 vanilla networks;
(c) the input pipeline alone on the real CIFAR-10 JPEGs (decode + cache, then cached epochs of
    shuffled batches), compared with the train step's image rate.
Each figure is the median of repeated timings after warm-up. Train and inference steps feed
synthetic uint8 batches to the real step functions, so only the model and the step are timed.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mixmo_tf import data as data_lib  # noqa: E402
from mixmo_tf.config import Config  # noqa: E402
from mixmo_tf.train import build_trainer  # noqa: E402


def compare_rates(fns, images_per_call, warmup=3, repeats=7, calls=3):
  """Median images/s of each function, timed round-robin so that machine noise hits all alike."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  rates = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      for _ in range(calls):
        fn()
      rates[name].append(images_per_call * calls / (time.perf_counter() - start))
  return {name: statistics.median(r) for name, r in rates.items()}


def make_trainer(width, members, jit=False, precision="float32", depth=28):
  config = Config(dataset="digits", image_size=32, depth=depth, width=width,
                  num_members=members, batch_repetitions=1 if members == 1 else 2,
                  mixing="cutmix", batch_size=64, epochs=1, jit_compile=jit, precision=precision,
                  output_dir=tempfile.mkdtemp(), log_every_steps=10**9)
  return build_trainer(config, tf.distribute.OneDeviceStrategy("/cpu:0"))


def train_step_fn(trainer):
  """The real distributed train step on a fixed synthetic uint8 batch of B/b unique images."""
  c = trainer.config
  rng = np.random.default_rng(0)
  batch = (tf.constant(rng.integers(0, 256, (c.unique_batch_size, 32, 32, 3)), tf.uint8),
           tf.constant(rng.integers(0, 10, c.unique_batch_size), tf.int32))
  step = tf.Variable(0, dtype=tf.int64)
  epoch = tf.constant(1, tf.int64)

  def run():
    loss, _ = trainer.train_step(batch, step.read_value(), epoch)
    step.assign_add(1)
    loss.numpy()
  return run


def inference_fn(models, batch=256):
  x = tf.constant(np.random.default_rng(0).normal(size=(batch, 32, 32, 3)), tf.float32)
  fns = [tf.function(lambda x, m=m: m([x] * m.num_inputs, training=False)) for m in models]

  def run():
    for fn in fns:
      fn(x).numpy()
  return run


def pipeline_rate(cifar_dir):
  config = Config(dataset="folder", data_dir=cifar_dir, output_dir=tempfile.mkdtemp())
  t0 = time.perf_counter()
  train, _, info = data_lib.load(config)
  decode = time.perf_counter() - t0
  rates = []
  for epoch in range(3):
    start, n = time.perf_counter(), 0
    for images, _ in data_lib.train_batches(train, info, 32, 0, epoch):
      n += int(images.shape[0])
    rates.append(n / (time.perf_counter() - start))
  return info.num_train + info.num_test, decode, statistics.median(rates)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true", help="WRN-28-1 only, fewer repeats.")
  parser.add_argument("--cifar_dir", default="", help="Unpacked CIFAR-10 JPEG tree (c).")
  parser.add_argument("--precision", default="float32")
  parser.add_argument("--xla", action="store_true", help="Also time the train step with XLA.")
  args = parser.parse_args()
  print(f"# {time.strftime('%Y-%m-%d')} TF {tf.__version__}, {os.cpu_count()} CPUs, "
        f"precision {args.precision}")
  widths = (1,) if args.quick else (1, 2, 10)
  print("\n(a) train step, batch 64 (with repetitions), images/s")
  print("| net | XLA | vanilla | MixMo M=2 | time ratio MixMo/vanilla | official PyTorch (v / M) |")
  anchors = {1: "540 / 515", 2: "178 / 180", 10: "10.7 / 10.4"}
  step_rates = {}
  for width in widths:
    for jit in ((False, True) if args.xla else (False,)):
      repeats = 3 if width == 10 else 7
      rates = compare_rates({m: train_step_fn(make_trainer(width, m, jit, args.precision))
                             for m in (1, 2)}, 64, repeats=repeats)
      rates = [rates[1], rates[2]]
      step_rates[(width, jit)] = rates
      print(f"| WRN-28-{width} | {'on' if jit else 'off'} | {rates[0]:.0f} | {rates[1]:.0f} | "
            f"{rates[0] / rates[1]:.3f} | {anchors[width]} |", flush=True)
  print("\n(b) inference, batch 256, images/s")
  print("| net | vanilla | MixMo M=2 (folded) | MixMo M=2 (M stems) | DE of 2 | "
        "MixMo/vanilla | MixMo/DE |")
  for width in ((1,) if args.quick else (1, 2)):
    vanilla = make_trainer(width, 1, precision=args.precision).model
    mixmo = make_trainer(width, 2, precision=args.precision).model
    other = make_trainer(width, 1, precision=args.precision).model
    r = compare_rates({"vanilla": inference_fn([vanilla]), "folded": inference_fn([mixmo.folded()]),
                       "stems": inference_fn([mixmo]), "de2": inference_fn([vanilla, other])}, 256)
    print(f"| WRN-28-{width} | {r['vanilla']:.0f} | {r['folded']:.0f} | {r['stems']:.0f} | "
          f"{r['de2']:.0f} | {r['folded'] / r['vanilla']:.3f} | {r['folded'] / r['de2']:.2f} |",
          flush=True)
  if args.cifar_dir:
    count, decode, rate = pipeline_rate(args.cifar_dir)
    train_img = step_rates[(1, False)][1]
    print(f"\n(c) input pipeline on {count} real CIFAR-10 JPEGs: decode + cache {decode:.1f} s "
          f"({count / decode:.0f} img/s); cached epochs {rate:.0f} unique img/s = "
          f"{rate * 2:.0f} img/s with b = 2 repetitions; {rate * 2 / train_img:.1f}x the WRN-28-1 "
          f"MixMo train step ({train_img:.0f} img/s)")


if __name__ == "__main__":
  main()
