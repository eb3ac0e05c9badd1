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


NO_TENSORFLOW = str(__import__("pathlib").Path(__file__).resolve().parent / "scripts" /
                    "no_tensorflow.py")


def run_without_tensorflow(args, backend="jax", env=None, timeout=900, check=True, cwd=None):
  """Runs `python tests/scripts/no_tensorflow.py ARGS` (TensorFlow, TFP and TFDS unimportable)
  under KERAS_BACKEND=backend; returns stdout + stderr (AssertionError with both if it fails)."""
  return run_python([NO_TENSORFLOW] + list(args), backend, env, timeout, check, cwd)


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
