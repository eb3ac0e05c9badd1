"""AugMix's cost inside the train step: `step.member_batch` with and without AugMix.

    python benchmarks/augmix_pipeline.py [/path/to/cifar10] [num_steps]

AugMix runs per copy after the crop, in the step (docs/method.md §9). Times one replica's
`member_batch` (in a tf.function, as the trainer runs it) on 32 unique 32x32 images, M = 2, b = 2
(128 AugMix-ed copies a step): the CIFAR-10 JPEG folder's first images if given, else random ones.
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mixmo_tf import data as data_lib  # noqa: E402
from mixmo_tf.core import step as step_lib  # noqa: E402
from mixmo_tf.config import Config  # noqa: E402

UNIQUE, MEMBERS, REPS = 32, 2, 2


def images_of(root):
  if root is None:
    return tf.constant(np.random.RandomState(0).randint(0, 256, (UNIQUE, 32, 32, 3)), tf.uint8)
  config = Config(dataset="folder", data_dir=root, output_dir=tempfile.mkdtemp())
  train, _, _ = data_lib.load(config)
  return next(iter(train.batch(UNIQUE)))[0]


def seconds_per_step(images, augmix, steps):
  spec = step_lib.StepSpec(
      num_members=MEMBERS, batch_repetitions=REPS, input_repetition_probability=0.0,
      mixing="cutmix", alpha=2.0, weight_root=3.0, msda="none", msda_alpha=1.0,
      msda_probability=0.5, global_batch_size=UNIQUE * REPS, l2=0.0, num_replicas=1,
      num_classes=10, crop_padding=4, flip=True, mean=data_lib.CIFAR_MEAN, std=data_lib.CIFAR_STD,
      mask_shape=(32, 32), augmix=augmix)
  labels = tf.zeros([UNIQUE], tf.int32)
  run = tf.function(lambda s: step_lib.member_batch(spec, images, labels, (), tf.stack([s, 0]),
                                                    tf.constant([1, 2]), 0.5).inputs)
  run(tf.constant(0))  # Tracing.
  start = time.perf_counter()
  for s in range(1, steps + 1):
    [x.numpy() for x in run(tf.constant(s))]
  return (time.perf_counter() - start) / steps


def main():
  root = sys.argv[1] if len(sys.argv) > 1 else None
  steps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
  images = images_of(root)
  plain = seconds_per_step(images, (), steps)
  augmix = seconds_per_step(images, (3, 4, 3), steps)
  copies = UNIQUE * MEMBERS * REPS
  print(f"member_batch, {UNIQUE} unique x b={REPS} x M={MEMBERS}: plain {1e3 * plain:.1f} ms, "
        f"AugMix (width 3, depth 1-4, severity 3) {1e3 * augmix:.1f} ms per step; AugMix adds "
        f"{1e3 * (augmix - plain):.1f} ms ({1e3 * (augmix - plain) / copies:.2f} ms per copy)")


if __name__ == "__main__":
  main()
