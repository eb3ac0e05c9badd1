"""AugMix input-pipeline throughput on the real CIFAR-10 JPEGs: does it outrun the train step?

    python benchmarks/augmix_pipeline.py /path/to/cifar10 [num_batches]

Prints unique images/s of one shuffled epoch slice with and without AugMix (decode and cache
excluded); compare with the train step's rate from benchmarks/throughput.py.
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mixmo_tf import data as data_lib  # noqa: E402
from mixmo_tf.config import Config  # noqa: E402


def rate(train, info, augmix, batches):
  ds = data_lib.train_batches(train, info, 32, 0, 0, augmix=augmix).take(batches)
  iterator = iter(ds)
  next(iterator)  # warm-up: tracing and the shuffle buffer
  start, n = time.perf_counter(), 0
  for images, _ in iterator:
    n += int(images.shape[0])
  return n / (time.perf_counter() - start)


def main():
  root = sys.argv[1]
  batches = int(sys.argv[2]) if len(sys.argv) > 2 else 200
  config = Config(dataset="folder", data_dir=root, output_dir=tempfile.mkdtemp())
  train, _, info = data_lib.load(config)
  plain = rate(train, info, None, batches)
  augmix = rate(train, info, (3, 4, 3), batches)
  print(f"unique img/s: plain {plain:.0f}, AugMix (width 3, depth 1-4, severity 3) {augmix:.0f}; "
        f"with b = 2 the step consumes 2 images per unique one")


if __name__ == "__main__":
  main()
