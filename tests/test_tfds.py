"""TFDS CIFAR-10 / CIFAR-100 / CIFAR-10-C through the real builders (docs/method.md §9).

The real TFDS builders prepare tiny fake archives written in the official binary / .npy layouts:
only the download manager's `download_and_extract` is patched, to hand back the extracted folder
(so the checksum check of the real archive is skipped). Offline is faked below the TFDS downloader,
at `requests`' HTTP adapter, so TFDS's own download path runs and fails as it does offline.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import shutil
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.helpers import offline, tiny_config
from mixmo_tf import training
from mixmo_tf.data import corrupted, datasets, tfds as data_tfds
from mixmo_tf.evaluation import corruptions

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
CIFAR10_C_URL = "https://zenodo.org/record/2535967/files/CIFAR-10-C.tar"


def _image(index: int) -> np.ndarray:
  """A distinct, reproducible uint8 [32, 32, 3] image."""
  return np.random.RandomState(index).randint(0, 256, (32, 32, 3)).astype(np.uint8)


def _records(labels, images) -> bytes:
  """CIFAR binary records: the label byte(s), then 3072 pixel bytes, channel-major (R, G, B)."""
  return b"".join(bytes(label) + image.transpose(2, 0, 1).tobytes()
                  for label, image in zip(labels, images))


def _write_cifar10(root, per_class_per_batch=1, test_per_class=1):
  """`root/cifar-10-batches-bin/` as in cifar-10-binary.tar.gz; returns test (images, labels)."""
  folder = os.path.join(root, "cifar-10-batches-bin")
  os.makedirs(folder)
  index = 0
  for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    count = test_per_class if name == "test_batch.bin" else per_class_per_batch
    labels = [(c,) for c in range(10) for _ in range(count)]
    images = [_image(index + i) for i in range(len(labels))]
    index += len(labels)
    with open(os.path.join(folder, name), "wb") as f:
      f.write(_records(labels, images))
  with open(os.path.join(folder, "batches.meta.txt"), "w") as f:
    f.write("\n".join(f"class{c}" for c in range(10)) + "\n\n")
  return np.stack(images), np.array([label for label, in labels])


def _write_cifar100(root, train_examples=64, test_examples=12):
  """`root/cifar-100-binary/` as in cifar-100-binary.tar.gz; returns the test (images, labels)."""
  folder = os.path.join(root, "cifar-100-binary")
  os.makedirs(folder)
  for name, count, offset in (("train.bin", train_examples, 0),
                              ("test.bin", test_examples, 10_000)):
    fine = [(7 * i) % 100 for i in range(count)]
    images = [_image(offset + i) for i in range(count)]
    with open(os.path.join(folder, name), "wb") as f:
      f.write(_records([(label // 5, label) for label in fine], images))
  with open(os.path.join(folder, "coarse_label_names.txt"), "w") as f:
    f.write("\n".join(f"super{c}" for c in range(20)) + "\n")
  with open(os.path.join(folder, "fine_label_names.txt"), "w") as f:
    f.write("\n".join(f"fine{c}" for c in range(100)) + "\n")
  return np.stack(images), np.array(fine)


def _write_cifar10_c(root, stem, per_severity=6):
  """`root/CIFAR-10-C/{stem}.npy` [5B, 32, 32, 3] (severities 1..5 in blocks of B) and
  `labels.npy` [5B], as in CIFAR-10-C.tar; returns the labels of one block."""
  folder = os.path.join(root, "CIFAR-10-C")
  os.makedirs(folder)
  labels = np.arange(per_severity) % 10
  np.save(os.path.join(folder, "labels.npy"), np.tile(labels, 5).astype(np.uint8))
  images = np.stack([_image(20_000 + i) for i in range(5 * per_severity)])
  for severity in range(5):  # Tell severities apart: block s is filled with the value 10 * s.
    images[severity * per_severity:(severity + 1) * per_severity] = 10 * (severity + 1)
  np.save(os.path.join(folder, f"{stem}.npy"), images)
  return labels


@contextlib.contextmanager
def _fake_download(url, extracted):
  """The download manager hands back `extracted` for `url` (asserted), as after a download."""
  calls = []

  def download_and_extract(self, url_or_urls):
    del self
    assert url_or_urls == url, url_or_urls
    calls.append(url_or_urls)
    return str(extracted)

  with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                         download_and_extract):
    yield calls


def _prepare(name, url, extracted, data_dir):
  with _fake_download(url, extracted) as calls:
    data_tfds.prepared_builder(name, str(data_dir))
  assert calls == [url]


def test_prepare_path_modules_import():
  # The lazy imports on TFDS's prepare path (importlib_resources behind code_path, which TFDS
  # only declares for Python < 3.9) are declared and installed: `pip check` cannot see them.
  import importlib_resources  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
  parser = configparser.ConfigParser()
  parser.read(os.path.join(os.path.dirname(__file__), os.pardir, "setup.cfg"))
  requirements = parser["options"]["install_requires"].split()
  assert any(r.startswith("importlib_resources") for r in requirements), requirements
  for name in ("cifar10", "cifar100", "cifar10_corrupted/fog_1"):
    builder = tfds.builder(name, data_dir="/nonexistent/tfds")
    assert os.path.isfile(builder.code_path), builder.code_path
    assert builder.url_infos, name  # Reads the registered checksums.


def test_cifar10_real_builder_prepares_fake_archive(tmp_path):
  test_images, test_labels = _write_cifar10(tmp_path / "extracted")
  with _fake_download(CIFAR10_URL, tmp_path / "extracted") as calls:
    train_x, train_y, num_classes = data_tfds.load_split("cifar10", "train",
                                                         str(tmp_path / "tfds"))
    images, labels, test_classes = data_tfds.load_split("cifar10", "test", str(tmp_path / "tfds"))
  assert len(calls) == 1  # Prepared once for both splits.
  assert (len(train_y), len(labels), num_classes, test_classes) == (50, 10, 10, 10)
  assert train_x.dtype == images.dtype == np.uint8 and train_y.dtype == labels.dtype == np.int32
  assert train_x.shape == (50, 32, 32, 3) and images.shape == (10, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(train_y), [5] * 10)  # One per class per batch file.
  order = np.argsort(labels)  # TFDS may shuffle examples when writing.
  np.testing.assert_array_equal(labels[order], test_labels)
  np.testing.assert_array_equal(images[order], test_images)
  # The files' fixed order: read twice, the same arrays.
  again, again_labels, _ = data_tfds.load_split("cifar10", "test", str(tmp_path / "tfds"))
  np.testing.assert_array_equal(again, images)
  np.testing.assert_array_equal(again_labels, labels)


def test_cifar100_real_builder_then_two_training_steps(tmp_path):
  test_images, test_labels = _write_cifar100(tmp_path / "extracted")
  data_dir = tmp_path / "tfds"
  _prepare("cifar100", CIFAR100_URL, tmp_path / "extracted", data_dir)
  images, labels, num_classes = data_tfds.load_split("cifar100", "test", str(data_dir))
  assert (len(labels), num_classes) == (12, 100)
  order, expected = np.argsort(labels, kind="stable"), np.argsort(test_labels, kind="stable")
  np.testing.assert_array_equal(labels[order], test_labels[expected])  # The fine labels.
  np.testing.assert_array_equal(images[order], test_images[expected])
  config = tiny_config(tmp_path / "run", dataset="cifar100", data_dir=str(data_dir), max_steps=2,
                       depth=10, width=1)
  with offline():  # Prepared: reading and training must not touch the network.
    data = datasets.load(config)
    results = training.run(config)
  assert (data.info.num_classes, data.info.num_train, data.info.num_test) == (100, 64, 12)
  assert data.info.image_shape == (32, 32, 3) and data.info.mean == datasets.CIFAR_MEAN
  np.testing.assert_array_equal(data.test.images, images)  # The one reading order.
  assert results["global_step"] == 2
  assert 0.0 <= results["top1"] <= 1.0
  assert sum(k.startswith("top1_member_") for k in results) == config.num_members


def test_cifar10_c_real_builder_and_evaluate_corruptions(tmp_path):
  labels = _write_cifar10_c(tmp_path / "extracted", "elastic_transform")  # Config "elastic".
  data_dir = tmp_path / "tfds"
  _prepare("cifar10_corrupted/elastic_3", CIFAR10_C_URL, tmp_path / "extracted", data_dir)
  # No labels.npy under the TFDS data_dir: --corruptions=cifar10_c reads it through TFDS.
  assert not corrupted.is_released_folder(str(data_dir))
  sets = list(corrupted.tfds_cifar10_c_sets(str(data_dir), corruptions=("elastic",),
                                            severities=(3,)))
  assert [(name, severity) for name, severity, _, _ in sets] == [("elastic", 3)]
  images, got = sets[0][2:]
  assert images.dtype == np.uint8 and images.shape == (len(labels), 32, 32, 3)
  assert got.dtype == np.int32
  assert sorted(got) == sorted(labels)
  assert np.all(images == 30)  # Severity 3's block.

  def predictor(images):  # Two members whose mean logits rank class 0 first, class 1 second.
    logits = np.zeros((len(images), 2, 10), np.float32)
    logits[:, 0, 0], logits[:, 1, 1] = 5.0, 3.0
    return logits
  results = corruptions.evaluate_corruptions(predictor, sets)
  assert results["num_examples"] == len(labels)
  assert results["per_corruption"]["elastic"][3]["num_examples"] == len(labels)
  assert results["top1"] == pytest.approx(np.mean(labels == 0))
  assert results["top5"] == 1.0  # Classes 2..9 tie at 0: ties count in favour (metrics).


def _check_unavailable(error, name, flag, data_dir):
  message = str(error.value)
  assert isinstance(error.value, ValueError)  # A user's error: one line from the commands.
  assert f"'{name}'" in message and f"{flag}={data_dir}" in message
  assert "could not be downloaded" in message and "ConnectionError" in message
  assert f"tfds build {name.split('/')[0]} --data_dir=DIR" in message
  assert error.value.__cause__ is None and error.value.__suppress_context__
  assert len(message.splitlines()) == 2


def test_offline_training_dataset_one_clear_error(tmp_path):
  data_dir = str(tmp_path / "tfds")
  def no_layer(self, *args, **kwargs):  # Stops before building any model.
    raise AssertionError(f"a Keras layer was built: {type(self).__name__}")

  with offline(), mock.patch.object(keras.layers.Layer, "__init__", no_layer), \
      pytest.raises(datasets.DatasetUnavailableError) as error:
    training.run(tiny_config(tmp_path / "run", dataset="cifar100", data_dir=data_dir,
                             max_steps=2))
  _check_unavailable(error, "cifar100", "--data_dir", data_dir)
  assert "--dataset=folder" in str(error.value)


def test_offline_cifar10_c_training_fails_before_training(tmp_path):
  # --corruptions=cifar10_c without a released folder: TFDS's copy is checked at the start, not
  # after the training it would otherwise waste.
  data_dir = str(tmp_path / "tfds")
  def no_layer(self, *args, **kwargs):
    raise AssertionError(f"a Keras layer was built: {type(self).__name__}")

  with offline(), mock.patch.object(keras.layers.Layer, "__init__", no_layer), \
      pytest.raises(datasets.DatasetUnavailableError) as error:
    training.run(tiny_config(tmp_path / "run", corruptions="cifar10_c", corruptions_dir=data_dir,
                             max_steps=2))
  _check_unavailable(error, "cifar10_corrupted/brightness_1", "--corruptions_dir", data_dir)
  assert "--corruptions=none" in str(error.value)


def test_offline_cifar10_c_one_clear_error(tmp_path):
  data_dir = str(tmp_path / "tfds")
  sets = corrupted.tfds_cifar10_c_sets(data_dir, corruptions=("fog",), severities=(1,))
  with offline(), pytest.raises(datasets.DatasetUnavailableError) as error:
    next(sets)
  _check_unavailable(error, "cifar10_corrupted/fog_1", "--corruptions_dir",
                     data_dir)
  assert "--corruptions=none" in str(error.value)


def test_failed_download_is_one_clear_error(tmp_path):
  def fail(self, url_or_urls):
    del self
    raise tfds.download.DownloadError(f"Failed to get url {url_or_urls}. HTTP code: 503.")

  with mock.patch.object(tfds.download.DownloadManager, "download_and_extract", fail), \
      pytest.raises(datasets.DatasetUnavailableError, match="HTTP code: 503") as error:
    data_tfds.load_split("cifar10", "train", str(tmp_path))
  assert CIFAR10_URL in str(error.value)


def test_prepared_copy_is_used_offline_never_downloaded(tmp_path):
  _, expected_test_labels = _write_cifar100(tmp_path / "extracted")
  _prepare("cifar100", CIFAR100_URL, tmp_path / "extracted", tmp_path / "elsewhere")
  copy = tmp_path / "copied"  # As after copying the prepared folder from another machine.
  shutil.copytree(tmp_path / "elsewhere" / "cifar100", copy / "cifar100")

  def no_download(self, url_or_urls):
    raise AssertionError(f"download attempted: {url_or_urls}")

  with offline(), mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                                     no_download):
    test_x, test_y, num_classes = data_tfds.load_split("cifar100", "test", str(copy))
    _, train_y, _ = data_tfds.load_split("cifar100", "train", str(copy))
  assert (len(train_y), len(test_y), num_classes) == (64, 12, 100)
  assert test_x.shape == (12, 32, 32, 3)
  assert sorted(test_y) == sorted(expected_test_labels)
  assert not os.path.exists(copy / "downloads")


@pytest.mark.parametrize("network", ["fail", "hang"])
def test_offline_download_stops_within_30_seconds_with_the_one_message(tmp_path, network):
  """The README's `--dataset=cifar100 --mixing=cutmix` on a machine with no route out (a socket
  guard: name lookups fail, or connections hang): one message, no traceback, within 30 s of the
  process start (TFDS alone retried for 212 s, and a hanging connection hung for ever)."""
  import time

  from tests.conftest import REPO
  from tests.helpers import run_python
  guard = str(REPO / "tests" / "scripts" / "socket_guard")
  start = time.time()
  out = run_python(["-m", "mixmo_tf.train", "--dataset=cifar100", "--mixing=cutmix",
                    f"--data_dir={tmp_path / 'tfds'}", f"--output_dir={tmp_path / 'run'}"],
                   env={"PYTHONPATH": f"{REPO}{os.pathsep}{guard}", "GUARD_DNS": network},
                   timeout=120, check=False)
  elapsed = time.time() - start
  assert elapsed < 30, (elapsed, out[-2000:])
  assert "error: TFDS dataset 'cifar100' is not prepared" in out and "Traceback" not in out
  assert "tfds build cifar100" in out and "--dataset=folder" in out
