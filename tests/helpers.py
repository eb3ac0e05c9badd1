"""Small shared helpers for the tests."""

import contextlib
import dataclasses
from unittest import mock

from mixmo_tf.config import Config


def tiny_config(output_dir, **overrides) -> Config:
  """A seconds-long digits run: WRN-10-1, M=2, Cut-MixMo, b=2."""
  values = dict(dataset="digits", depth=10, width=1, num_members=2, mixing="cutmix",
                batch_repetitions=2, batch_size=32, epochs=2, lr_decay_epochs=(2,), seed=7,
                log_every_steps=1000, precision="float32", output_dir=str(output_dir))
  values.update(overrides)
  return dataclasses.replace(Config(), **values)


@contextlib.contextmanager
def offline():
  """Every HTTP(S) request fails as without a network (below TFDS's downloader and retries)."""
  import requests

  def send(self, request, **kwargs):
    del self, kwargs
    raise requests.exceptions.ConnectionError(
        f"Failed to resolve host for {request.url} (network is unreachable)")

  with mock.patch.object(requests.adapters.HTTPAdapter, "send", send):
    yield


def assert_non_blank_png(path, size=(600, 400)):
  """A PNG of the project's figure size with real content (colours and contrast), not blank."""
  import numpy as np
  from PIL import Image
  with Image.open(path) as image:
    assert image.size == size, path
    pixels = np.asarray(image.convert("RGB"))
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10, path
  assert pixels.std() > 5, path


WITHOUT_MODULES = str(__import__("pathlib").Path(__file__).resolve().parent / "scripts" /
                      "without_modules.py")
TENSORFLOW_MODULES = ("tensorflow", "tensorflow_probability", "tensorflow_datasets")


def run_without_modules(modules, args, backend="tensorflow", env=None, timeout=900, check=True,
                        cwd=None):
  """Runs `python tests/scripts/without_modules.py ARGS` with `modules` unimportable; returns
  stdout + stderr, which ends with `BLOCKED_MODULES_LOADED 0` when none was loaded."""
  env = dict(env or {}, WITHOUT_MODULES=",".join(modules))
  return run_python([WITHOUT_MODULES] + list(args), backend, env, timeout, check, cwd)


def run_without_tensorflow(args, backend="jax", env=None, timeout=900, check=True, cwd=None):
  """`run_without_modules` with TensorFlow, TFP and TFDS unimportable (under JAX by default)."""
  return run_without_modules(TENSORFLOW_MODULES, args, backend, env, timeout, check, cwd)


def run_python(args, backend="tensorflow", env=None, timeout=900, check=True, cwd=None):
  """Runs `python ARGS` from the repository root under KERAS_BACKEND=backend, CPU only, quiet;
  returns stdout + stderr (AssertionError with both if it fails and `check`)."""
  import os
  import subprocess
  import sys
  root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
  full_env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="",
                  JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=root)
  full_env.update(env or {})
  result = subprocess.run([sys.executable] + list(args), capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd or root)
  out = result.stdout + result.stderr
  if check:
    assert result.returncode == 0, out[-6000:]
  return out


def tf_engine_for(config, strategy=None):
  """The tf.distribute engine of `config`, set up as `mixmo_tf.training.run` sets it up (flags
  validated and resolved, precision settled, folder prepared and locked, seeded, data read), for
  tests that drive steps themselves: (engine, data, folder). Release the folder when done."""
  from mixmo_tf.training import engines, loop, tf_distribute, tf_engine
  config = engines.resolve(config.validate(), "tensorflow")
  strategy = strategy or tf_distribute.create_strategy(config.strategy, config.tpu)
  config, folder, data, _ = loop.start_run(config, "tensorflow", strategy.num_replicas_in_sync)
  try:
    return tf_engine.TFDistributeEngine(config, data.info, strategy, folder), data, folder
  except BaseException:
    folder.release()
    raise


def train_steps(engine, data, num_steps, epoch=0, first_batch=0):
  """Trains `num_steps` batches of the run's data order with `engine` (from batch `first_batch`
  of the 0-based `epoch`); returns each step's (loss, accuracy) as floats."""
  from mixmo_tf.data.batches import EpochBatches
  c = engine.config
  partners = c.batch_size * c.num_members if c.msda != "none" else 0
  batches = EpochBatches(data.train, c.unique_batch_size, c.seed, partners)
  reports = []
  engine.train(batches, epoch, first_batch, num_steps,
               lambda step, loss, accuracy: reports.append((float(loss), float(accuracy))))
  return reports
