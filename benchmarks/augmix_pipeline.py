"""AugMix's cost inside the train step: `step.member_batch` with and without AugMix.

    python benchmarks/augmix_pipeline.py [/path/to/cifar10] [num_steps]

AugMix runs per copy after the crop, in the step (docs/method.md §9). Times one replica's
`core.step.member_batch` (in a tf.function, as the tf.distribute engine runs it, seeded by
`core.step.step_seeds` as there) on 32 unique 32x32 images, M = 2, b = 2 (128 AugMix-ed copies a
step): 32 training images of the CIFAR-10 JPEG folder if given (`data.datasets.load` with
--train_subset=32: a fixed random subset), else random ones. AugMix is built on tf.image:
TensorFlow backend only.
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import mixmo_tf  # noqa: E402,F401  (first: it sets TensorFlow's environment before it loads)
import keras  # noqa: E402
import numpy as np  # noqa: E402

from mixmo_tf.config import Config  # noqa: E402
from mixmo_tf.core import seeds  # noqa: E402
from mixmo_tf.core import step as step_lib  # noqa: E402
from mixmo_tf.data import datasets  # noqa: E402
from mixmo_tf.data.info import DataInfo  # noqa: E402

UNIQUE, MEMBERS, REPS = 32, 2, 2
AUGMIX = dict(augmix_width=3, augmix_depth=4, augmix_severity=3)
# CIFAR-10's: its statistics, pad-crop 4, flips (as `data.datasets` gives for CIFAR and folders).
CIFAR_INFO = DataInfo("cifar10", 10, (32, 32, 3), UNIQUE, 0, datasets.CIFAR_MEAN,
                      datasets.CIFAR_STD, crop_padding=4, flip=True)


def images_of(root):
  """uint8 [UNIQUE, 32, 32, 3]: a fixed subset of the folder's training images, or random."""
  if root is None:
    return np.random.RandomState(0).randint(0, 256, (UNIQUE, 32, 32, 3)).astype(np.uint8)
  config = Config(dataset="folder", data_dir=root, image_size=32, train_subset=UNIQUE,
                  output_dir=tempfile.mkdtemp())
  return datasets.load(config).train.images[:UNIQUE]


def seconds_per_step(images, augmix, steps):
  """Mean seconds of one compiled `member_batch` call (its inputs fetched), after tracing."""
  import tensorflow as tf
  config = Config(dataset="cifar10", num_members=MEMBERS, batch_repetitions=REPS,
                  mixing="cutmix", batch_size=UNIQUE * REPS, augmix=augmix, **AUGMIX)
  # The stems' grid of a CIFAR WideResNet / PreActResNet: 32x32 (stride-1 stem).
  spec = step_lib.StepSpec.create(config, CIFAR_INFO, mask_shape=(32, 32))
  root = tf.constant(seeds.step_root(config.seed))
  images = tf.constant(images, tf.uint8)
  labels = tf.zeros([UNIQUE], tf.int32)

  @tf.function
  def run(step):
    seed, batch_seed = step_lib.step_seeds(root, step, 0)
    return step_lib.member_batch(spec, images, labels, (), seed, batch_seed, 0.5).inputs

  run(tf.constant(0, tf.int64))  # Tracing.
  start = time.perf_counter()
  for s in range(1, steps + 1):
    [x.numpy() for x in run(tf.constant(s, tf.int64))]
  return (time.perf_counter() - start) / steps


def main():
  if keras.backend.backend() != "tensorflow":
    print(f"augmix_pipeline: error: AugMix is built on tf.image: it needs KERAS_BACKEND="
          f"tensorflow, not {keras.backend.backend()}.", file=sys.stderr)
    return 2
  root = (sys.argv[1] or None) if len(sys.argv) > 1 else None
  steps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
  images = images_of(root)
  plain = seconds_per_step(images, False, steps)
  augmix = seconds_per_step(images, True, steps)
  copies = UNIQUE * MEMBERS * REPS
  print(f"member_batch, {UNIQUE} unique x b={REPS} x M={MEMBERS}: plain {1e3 * plain:.1f} ms, "
        f"AugMix (width 3, depth 1-4, severity 3) {1e3 * augmix:.1f} ms per step; AugMix adds "
        f"{1e3 * (augmix - plain):.1f} ms ({1e3 * (augmix - plain) / copies:.2f} ms per copy)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
