"""Shared test setup: quiet TF logs, the real data location, and the `slow` marker."""

import os
import pathlib

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
