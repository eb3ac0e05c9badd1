"""Tests of the plots (PAPER Fig. 4, docs/method.md §10.6) and of the corruption evaluation (10.4)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from mixmo_tf import corruptions
from mixmo_tf.evaluation import plots
from mixmo_tf.models import build_model
from tests.helpers import assert_non_blank_png

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def tiny_model():
  return build_model("wide_resnet", depth=10, width=1, num_members=2, num_classes=NUM_CLASSES,
                     image_shape=(8, 8, 3))


def test_write_all_writes_four_non_blank_pngs(tmp_path, tiny_model):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, NUM_CLASSES, size=64)
  logits = rng.normal(size=(64, 2, NUM_CLASSES)) * 3
  logits[:40, 0, :] += 5 * np.eye(NUM_CLASSES)[labels[:40]]  # Some correct, confident answers.
  paths = plots.write_all(str(tmp_path / "plots"), logits, labels, "logits", tiny_model)
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ["active_filters.png", "member_vs_ensemble.png", "reliability.png",
                   "stem_filters.png"]
  for path in paths:
    assert_non_blank_png(path)


def test_write_all_without_model_writes_two(tmp_path):
  logits = np.random.default_rng(1).normal(size=(16, 3, 4))
  paths = plots.write_all(str(tmp_path), logits, np.arange(16) % 4, "probs")
  assert sorted(os.path.basename(p) for p in paths) == ["member_vs_ensemble.png",
                                                         "reliability.png"]
  assert all(os.path.exists(p) for p in paths)


def test_active_filter_fraction_hand_built(tiny_model):
  layer = tiny_model.get_layer("group1_block1_conv1")
  original = layer.kernel.numpy()
  kernel = np.zeros(original.shape, np.float32)  # [3, 3, 16, 16]
  kernel[0, 0, 0, 0], kernel[2, 2, 15, 0] = 1.0, -1.0  # Filter 0: L1 = 2, the layer max.
  kernel[1, 1, 3, 1] = 0.8  # Exactly 0.4 x max: active (inclusive threshold).
  kernel[0, 2, 7, 2] = -0.8  # Negative weight, |w| counts: active.
  kernel[1, 0, 0, 3] = 0.79  # Just below: inactive.
  kernel[2, 1, 5, 4:] = 0.1  # Filters 4..15: 0.05 x max, inactive.
  try:
    layer.kernel.assign(kernel)
    fractions = dict(plots.active_filter_fraction(tiny_model))
    assert fractions["group1_block1_conv1"] == pytest.approx(3 / 16)
    assert dict(plots.active_filter_fraction(tiny_model, 0.3))["group1_block1_conv1"] == (
        pytest.approx(4 / 16))
  finally:
    layer.kernel.assign(original)
  # Stems and 1x1 projection shortcuts are excluded (docs/method.md §10.6).
  assert sorted(fractions) == ["group1_block1_conv1", "group1_block1_conv2",
                               "group2_block1_conv1", "group2_block1_conv2",
                               "group3_block1_conv1", "group3_block1_conv2"]
  assert all(0 < value <= 1 for value in fractions.values())


def _constant_image_predictor(num_members=2):
  """Fake predictor: every member predicts class (pixel value % K) with logit 10, others 0."""
  def predict(images):
    classes = np.asarray(images)[:, 0, 0, 0].astype(np.int64) % NUM_CLASSES
    logits = 10.0 * np.eye(NUM_CLASSES)[classes]
    return np.repeat(logits[:, None, :], num_members, axis=1).astype(np.float32)
  return predict


def _fake_block(severity, num, size=8):
  """Labels (i + severity) % K; the first `severity` images show their label, the rest label+1."""
  labels = (np.arange(num) + severity) % NUM_CLASSES
  shown = np.where(np.arange(num) < severity, labels, (labels + 1) % NUM_CLASSES)
  images = np.broadcast_to(shown[:, None, None, None], (num, size, size, 3)).astype(np.uint8)
  return images, labels


def _expected_nll(num_correct, num):
  p_right = np.exp(10.0) / (np.exp(10.0) + NUM_CLASSES - 1)
  p_wrong = 1.0 / (np.exp(10.0) + NUM_CLASSES - 1)
  return (num_correct * -np.log(p_right + 1e-12)
          + (num - num_correct) * -np.log(p_wrong + 1e-12)) / num


def _write_cifar100_c(directory, names, per_severity=8):
  blocks = [_fake_block(s, per_severity) for s in corruptions.SEVERITIES]
  images = np.concatenate([b[0] for b in blocks])
  np.save(directory / "labels.npy", np.concatenate([b[1] for b in blocks]))
  for name in names:
    np.save(directory / f"{name}.npy", images)


def test_cifar100_c_pooled_metrics_match_hand_count(tmp_path):
  names = ("fog", "zoom_blur")
  _write_cifar100_c(tmp_path, names)
  datasets = corruptions.cifar100_c_datasets(str(tmp_path), names)
  results = corruptions.evaluate_corruptions(_constant_image_predictor(), datasets)
  # Severity s has s correct of 8 per corruption: 2 x (1 + .. + 5) = 30 of 80.
  assert results["num_examples"] == 80
  assert results["top1"] == pytest.approx(30 / 80)
  assert results["top5"] == pytest.approx(1.0)  # A wrong answer still ranks the label second.
  assert results["nll"] == pytest.approx(_expected_nll(30, 80), rel=1e-5)
  assert sorted(results["per_corruption"]) == list(names)
  for name in names:
    for s in corruptions.SEVERITIES:
      entry = results["per_corruption"][name][s]
      assert entry["num_examples"] == 8
      assert entry["top1"] == pytest.approx(s / 8), (name, s)


def test_cifar100_c_file_errors(tmp_path):
  _write_cifar100_c(tmp_path, ("fog",))
  with pytest.raises(ValueError, match="snow.npy"):
    corruptions.cifar100_c_datasets(str(tmp_path), ("fog", "snow"))
  np.save(tmp_path / "frost.npy", np.zeros((40, 8, 8), np.uint8))
  with pytest.raises(ValueError, match=r"frost\.npy.*\(40, 8, 8\)"):
    corruptions.cifar100_c_datasets(str(tmp_path), ("frost",))
  with pytest.raises(ValueError, match="labels.npy"):
    corruptions.cifar100_c_datasets(str(tmp_path / "missing"), ("fog",))
  with pytest.raises(ValueError, match="6"):
    corruptions.cifar100_c_datasets(str(tmp_path), ("fog",), severities=(6,))


def test_corruption_name_lists():
  assert len(corruptions.CIFAR10_C_CORRUPTIONS) == 19
  assert len(set(corruptions.CIFAR100_C_CORRUPTIONS)) == 19
  with pytest.raises(ValueError, match="glass_blur"):
    corruptions.cifar10_c_datasets(corruptions=("glass_blur",))


def test_cifar10_c_tfds_mock_counts_add_up():
  import tensorflow_datasets as tfds
  names, severities = ("brightness", "gaussian_noise"), (1, 2)
  with tfds.testing.mock_data(num_examples=8):
    datasets = list(corruptions.cifar10_c_datasets(corruptions=names, severities=severities))
    for _, _, ds in datasets:
      assert ds.element_spec[0].dtype == tf.uint8 and ds.element_spec[1].dtype == tf.int32
    results = corruptions.evaluate_corruptions(_constant_image_predictor(3), datasets)
  assert results["num_examples"] == 32
  assert sum(entry["num_examples"] for per in results["per_corruption"].values()
             for entry in per.values()) == 32
  assert set(results["per_corruption"]) == set(names)
  assert 0.0 <= results["top1"] <= results["top5"] <= 1.0 and np.isfinite(results["nll"])


def test_cifar10_c_tfds_mock_deterministic_hand_count():
  import tensorflow_datasets as tfds

  def as_dataset(self, split, *args, **kwargs):
    del split, args, kwargs
    severity = int(self.builder_config.name.rsplit("_", 1)[1])
    images, labels = _fake_block(severity, 8, size=32)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels.astype(np.int64)})

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    datasets = corruptions.cifar10_c_datasets(corruptions=("fog", "snow"), severities=(1, 2))
    results = corruptions.evaluate_corruptions(_constant_image_predictor(), datasets, "probs")
  assert results["num_examples"] == 32
  assert results["top1"] == pytest.approx(6 / 32)  # 2 corruptions x (1 + 2) correct.
  assert results["nll"] == pytest.approx(_expected_nll(6, 32), rel=1e-5)
  assert results["per_corruption"]["snow"][2]["top1"] == pytest.approx(2 / 8)


def test_empty_corruption_set_is_named():
  empty = tf.data.Dataset.from_tensor_slices((np.zeros((0, 8, 8, 3), np.uint8),
                                              np.zeros((0,), np.int32)))
  with pytest.raises(ValueError, match="Corruption 'fog' severity 3 has no examples"):
    corruptions.evaluate_corruptions(_constant_image_predictor(), [("fog", 3, empty)])
