"""Shared test setup: quiet TF logs, the real data location, the `slow` marker, the JAX session."""

import os
import pathlib
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: real-data or multi-process checks (seconds to minutes)")


@pytest.fixture(scope="session")
def cifar10_folder(tmp_path_factory):
  """The real CIFAR-10 JPEGs from ../shared/data, unpacked once per session (skipped if absent)."""
  import tarfile
  if not SHARED_DATA.exists():
    pytest.skip(f"real CIFAR-10 archive not found at {SHARED_DATA}")
  dest = tmp_path_factory.mktemp("cifar10")
  with tarfile.open(SHARED_DATA) as tar:
    tar.extractall(dest, filter="data")
  return dest / "cifar10"


@pytest.fixture(autouse=True)
def float32_policy_after_each_test():
  """A run sets Keras' process-wide dtype policy (--precision); later tests build models in the
  same process and must start from float32 again."""
  yield
  import keras
  keras.mixed_precision.set_dtype_policy("float32")


def _prepare_jax_session(data):
  """The JAX session's inputs: an OOD image tree, a released-layout corrupted set (8x8 digits),
  models saved under TensorFlow, and a network with a member batch sampled under TensorFlow."""
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(0)
  for i in range(12):
    folder = data / "ood" / ("a" if i % 2 else "b")
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)).save(folder / f"{i}.png")
  from mixmo_tf.data import datasets
  from mixmo_tf.data.corrupted import RELEASED_CORRUPTIONS
  test = datasets.digits_dataset().test
  images, labels = test.images[:6], test.labels[:6]
  (data / "corrupted").mkdir()
  np.save(data / "corrupted" / "labels.npy", np.tile(labels, 5))
  for k, name in enumerate(RELEASED_CORRUPTIONS):
    shifted = np.clip(images.astype(int) + 10 * k - 90, 0, 255).astype(np.uint8)
    np.save(data / "corrupted" / f"{name}.npy", np.tile(shifted, (5, 1, 1, 1)))
  from mixmo_tf.core import seeds
  from mixmo_tf.core import step as step_lib
  from tests.test_keras_trainer import learnable_data, tiny_network, tiny_spec
  from tests.test_backbone import tiny_keras_hub_resnet, tiny_user_backbone
  from tests.test_model_backends import stage_tf_save
  tiny_user_backbone(32).save(data / "user_backbone.keras")
  tiny_keras_hub_resnet().save_to_preset(str(data / "keras_hub_preset"))
  (data / "model_backends").mkdir()
  stage_tf_save(data / "model_backends")
  network = tiny_network()
  network.save(data / "step_model.keras")
  pixels, classes = learnable_data(8, seed=3)
  seed, batch_seed = step_lib.step_seeds(seeds.step_root(11), 0, 0)
  batch = step_lib.member_batch(tiny_spec(network), pixels, classes, (), seed, batch_seed, 0.5)
  arrays = [np.asarray(x) for x in list(batch.inputs) + [batch.masks, batch.targets, batch.kappa]]
  assert 0 < float(np.mean(arrays[-1][:, 0])) < 1  # kappa: a real mix of the two inputs.
  np.savez(data / "step_batch.npz", *arrays)
  return arrays


@pytest.fixture(scope="session")
def jax_session(tmp_path_factory):
  """tests/scripts/jax_session.py, run once: JAX, two forced host devices, TensorFlow, TFP and
  TFDS unimportable. Returns (out, data, arrays, log): its outputs, its inputs, the member batch
  sampled here, its log."""
  from tests.helpers import run_without_tensorflow
  out, data = tmp_path_factory.mktemp("jax_out"), tmp_path_factory.mktemp("jax_in")
  arrays = _prepare_jax_session(data)
  xla_flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
  log = run_without_tensorflow([os.path.join("tests", "scripts", "jax_session.py"), str(out),
                                str(data)], env={"XLA_FLAGS": xla_flags.strip()}, timeout=1500)
  assert "BLOCKED_MODULES_LOADED 0" in log, log[-3000:]
  return types.SimpleNamespace(out=out, data=data, arrays=arrays, log=log)
