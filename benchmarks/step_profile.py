"""Where a MixMo step's extra time goes: the step of the tf.distribute engine, timed in parts.

    python benchmarks/step_profile.py [--depth=28 --width=1] [--rounds=7] [--steps=20]

For vanilla (M = 1, b = 1) and MixMo (M = 2, b = 2, Cut-MixMo, p = 0.5) at the same batch (64,
counted with repetitions), float32, this CPU, times (median over interleaved rounds, ms per step):
  step          the whole train step (`TFDistributeEngine.train_step`)
  member_batch  repetition and pairing, per-copy crop/flip, masks and kappa (`core.step`)
  masks         `sample_masks` alone (kappa, boxes, per-batch choice and role shuffle)
  indices       `member_indices` alone (the [M, B] repetition table)
  forward       the network's training forward on given inputs and masks
  fwd_bwd       forward, `replica_loss` and gradients (`tf_engine.loss_and_gradients`)
  loss          `replica_loss` on given logits (w_r, soft CE, L2)
and prints MixMo - vanilla per part against the step's time: what a fix must target (> 1%).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def build(depth: int, width: int, members: int):
  """The engine, a synthetic unique batch and the parts' tf.functions for one configuration."""
  import dataclasses

  import numpy as np
  import tensorflow as tf

  from mixmo_tf.config import Config
  from mixmo_tf.core import seeds, step as step_lib
  from mixmo_tf.core.mixing import sample_masks
  from mixmo_tf.data.info import DataInfo
  from mixmo_tf.run_folder import RunFolder
  from mixmo_tf.training import tf_engine
  b = 1 if members == 1 else 2
  config = dataclasses.replace(
      Config(), dataset="digits", depth=depth, width=width, num_members=members,
      batch_repetitions=b, mixing="linear" if members == 1 else "cutmix", batch_size=64,
      precision="float32", output_dir=tempfile.mkdtemp(), engine="custom", strategy="mirrored")
  info = DataInfo("bench", 10, (32, 32, 3), 50000, 1, (0.5,) * 3, (0.25,) * 3, 4, True)
  seeds.initialise(config.seed)
  engine = tf_engine.TFDistributeEngine(config, info, tf.distribute.OneDeviceStrategy("/cpu:0"),
                                        RunFolder(config.output_dir))
  spec, net = engine.spec, engine.network
  rng = np.random.default_rng(0)
  unique = config.unique_batch_size
  images = tf.constant(rng.integers(0, 256, (unique, 32, 32, 3)), tf.uint8)
  labels = tf.constant(rng.integers(0, 10, unique), tf.int32)
  seed, batch_seed = step_lib.step_seeds(tf.constant(seeds.step_root(7)), tf.constant(3,
                                                                                      tf.int64), 0)
  batch = step_lib.member_batch(spec, images, labels, (), seed, batch_seed, 0.5)
  inputs, targets, masks, kappa = batch.inputs, batch.targets, batch.masks, batch.kappa
  logits = net(inputs + [masks], training=True)
  step_t, epoch_t = tf.constant(0, tf.int64), tf.constant(1, tf.int64)
  parts = {
      "step": lambda: engine.train_step((images, labels), step_t, epoch_t),
      "member_batch": tf.function(lambda: step_lib.member_batch(
          spec, images, labels, (), seed, batch_seed, 0.5).masks),
      "masks": tf.function(lambda: sample_masks(
          spec.global_batch_size, *spec.mask_shape, members, spec.mixing, spec.alpha, 0.5,
          seed, batch_seed)[0]),
      "indices": tf.function(lambda: step_lib.member_indices(unique, members, b, 0.0, seed)),
      "forward": tf.function(lambda: net(inputs + [masks], training=True)),
      "fwd_bwd": tf.function(lambda: tf_engine.loss_and_gradients(
          net, engine.optimizer, spec, inputs, targets, masks, kappa)[0]),
      "loss": tf.function(lambda: step_lib.replica_loss(spec, logits, targets, kappa,
                                                        net.trainable_variables)),
  }
  return parts


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--depth", type=int, default=28)
  parser.add_argument("--width", type=int, default=1)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  import mixmo_tf  # noqa: F401  (oneDNN on before TensorFlow loads)
  from mixmo_tf import runtime
  configs = {"vanilla": build(args.depth, args.width, 1), "mixmo": build(args.depth, args.width, 2)}
  names = list(configs["vanilla"])
  times = {c: {n: [] for n in names} for c in configs}
  for fn in (f for parts in configs.values() for f in parts.values()):
    for _ in range(3):
      _numpy(fn())
  for _ in range(args.rounds):
    for name in names:
      for config in configs:  # Interleaved: machine noise hits both alike.
        fn = configs[config][name]
        start = time.perf_counter()
        for _ in range(args.steps):
          out = fn()
        _numpy(out)
        times[config][name].append(1000 * (time.perf_counter() - start) / args.steps)
  medians = {c: {n: statistics.median(v) for n, v in parts.items()} for c, parts in times.items()}
  step = medians["vanilla"]["step"]
  print(f"{time.strftime('%Y-%m-%d %H:%M')} CPU {runtime.cpu_model()}, oneDNN "
        f"{'on' if runtime.onednn_enabled() else 'off'}; WRN-{args.depth}-{args.width}, batch 64, "
        f"float32; median of {args.rounds} rounds x {args.steps} calls (ms per call)")
  print(f"{'part':<14}{'vanilla':>10}{'MixMo':>10}{'extra':>10}{'% of step':>11}")
  for name in names:
    extra = medians["mixmo"][name] - medians["vanilla"][name]
    print(f"{name:<14}{medians['vanilla'][name]:>10.2f}{medians['mixmo'][name]:>10.2f}"
          f"{extra:>10.2f}{100 * extra / step:>10.1f}%")
  print(f"MixMo / vanilla step time: {medians['mixmo']['step'] / step:.3f}")


def _numpy(out):
  """Waits for a result (TensorFlow runs ops asynchronously)."""
  import tensorflow as tf
  for t in tf.nest.flatten(out):
    if hasattr(t, "numpy"):
      t.numpy()


if __name__ == "__main__":
  main()
