"""Tests of the plots (PAPER Fig. 4, docs/method.md §10.6) and of the corruption evaluation (10.4):
the released CIFAR-10-C / CIFAR-100-C .npy layout on every backend, CIFAR-10-C through TFDS."""

import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from mixmo_tf.data import corrupted
from mixmo_tf.evaluation import corruptions, plots
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


def _write_released(directory, names, per_severity=8):
  """A released CIFAR-10-C / CIFAR-100-C folder: `<name>.npy` [5B, 8, 8, 3] with severities 1..5
  in blocks of B, and `labels.npy` [5B] (uint8, as in the releases)."""
  blocks = [_fake_block(s, per_severity) for s in corrupted.SEVERITIES]
  images = np.concatenate([b[0] for b in blocks])
  np.save(directory / "labels.npy", np.concatenate([b[1] for b in blocks]).astype(np.uint8))
  for name in names:
    np.save(directory / f"{name}.npy", images)


def _check_hand_count(results, names, per_severity=8):
  """Severity s has min(s, B) correct of B = `per_severity` per corruption (see _fake_block)."""
  num = len(names) * len(corrupted.SEVERITIES) * per_severity
  correct = len(names) * sum(min(s, per_severity) for s in corrupted.SEVERITIES)
  assert results["num_examples"] == num
  assert results["top1"] == pytest.approx(correct / num)
  assert results["top5"] == pytest.approx(1.0)  # A wrong answer still ranks the label second.
  assert results["nll"] == pytest.approx(_expected_nll(correct, num), rel=1e-5)
  assert sorted(results["per_corruption"]) == sorted(names)
  for name in names:
    assert sorted(results["per_corruption"][name]) == list(corrupted.SEVERITIES)
    for s in corrupted.SEVERITIES:
      entry = results["per_corruption"][name][s]
      assert entry["num_examples"] == per_severity
      assert entry["top1"] == pytest.approx(min(s, per_severity) / per_severity), (name, s)


def test_released_sets_yield_each_severity_block(tmp_path):
  _write_released(tmp_path, ("fog", "zoom_blur"), per_severity=4)
  sets = list(corrupted.released_sets(str(tmp_path), ("zoom_blur", "fog"), severities=(4, 2)))
  assert [(name, s) for name, s, _, _ in sets] == [("zoom_blur", 4), ("zoom_blur", 2),
                                                  ("fog", 4), ("fog", 2)]
  for _, severity, images, labels in sets:
    expected_images, expected_labels = _fake_block(severity, 4)
    assert images.dtype == np.uint8 and images.shape == (4, 8, 8, 3)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)


def test_released_folder_pooled_metrics_match_hand_count_for_both_kinds(tmp_path):
  # Both releases share the .npy layout: the same folder read as either kind, all 19 files.
  _write_released(tmp_path, corrupted.RELEASED_CORRUPTIONS, per_severity=2)
  names = ("fog", "zoom_blur")
  results = corruptions.evaluate_corruptions(
      _constant_image_predictor(), corrupted.released_sets(str(tmp_path), names), "probs")
  _check_hand_count(results, names, per_severity=2)
  assert results["top1"] == pytest.approx(18 / 20)  # 2 x (1 + 2 + 2 + 2 + 2) of 2 x 5 x 2.
  for kind in corrupted.KINDS:
    results = corruptions.corruption_results(_constant_image_predictor(), kind, str(tmp_path))
    assert results["ensemble"] == "logits"
    _check_hand_count(results, corrupted.RELEASED_CORRUPTIONS, per_severity=2)


def test_released_folder_file_errors(tmp_path):
  _write_released(tmp_path, ("fog",))
  with pytest.raises(ValueError, match="snow.npy"):  # Checked at the call, before any block.
    corrupted.released_sets(str(tmp_path), ("fog", "snow"))
  np.save(tmp_path / "frost.npy", np.zeros((40, 8, 8), np.uint8))
  with pytest.raises(ValueError, match=r"frost\.npy.*\(40, 8, 8\)"):
    corrupted.released_sets(str(tmp_path), ("frost",))
  np.save(tmp_path / "snow.npy", np.zeros((40, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match=r"snow\.npy must hold uint8.*float32"):
    corrupted.released_sets(str(tmp_path), ("snow",))
  with pytest.raises(ValueError, match="labels.npy"):
    corrupted.released_sets(str(tmp_path / "missing"), ("fog",))
  with pytest.raises(ValueError, match="6"):
    corrupted.released_sets(str(tmp_path), ("fog",), severities=(6,))
  (tmp_path / "odd").mkdir()
  np.save(tmp_path / "odd" / "labels.npy", np.zeros(12, np.uint8))
  with pytest.raises(ValueError, match=r"multiple of 5.*\(12,\)"):
    corrupted.released_sets(str(tmp_path / "odd"), ("fog",))


def test_corrupted_sets_pick_the_source_and_name_bad_kinds(tmp_path):
  with pytest.raises(ValueError, match="cifar10_c, cifar100_c"):
    corrupted.corrupted_sets("imagenet_c", str(tmp_path))
  with pytest.raises(ValueError, match="holds no labels.npy.*CIFAR-100-C"):
    corrupted.corrupted_sets("cifar100_c", str(tmp_path))
  _write_released(tmp_path, corrupted.RELEASED_CORRUPTIONS, per_severity=1)
  for kind in corrupted.KINDS:  # A released folder is read as such, whichever the kind.
    first = next(corrupted.corrupted_sets(kind, str(tmp_path)))
    assert first[:2] == (corrupted.RELEASED_CORRUPTIONS[0], 1)
  with pytest.raises(ValueError, match="'logits' or 'probs'"):
    corruptions.corruption_results(_constant_image_predictor(), "cifar10_c", str(tmp_path),
                                   mode="mean")


def test_corruption_name_lists():
  assert len(corrupted.CIFAR10_C_CORRUPTIONS) == len(set(corrupted.CIFAR10_C_CORRUPTIONS)) == 19
  assert len(set(corrupted.CIFAR100_C_CORRUPTIONS)) == 19
  assert len(set(corrupted.RELEASED_CORRUPTIONS)) == 19
  # TFDS names two of the released files otherwise; the other 17 are the same.
  assert set(corrupted.RELEASED_CORRUPTIONS) - set(corrupted.CIFAR10_C_CORRUPTIONS) == {
      "elastic_transform", "glass_blur"}
  assert set(corrupted.CIFAR10_C_CORRUPTIONS) - set(corrupted.RELEASED_CORRUPTIONS) == {
      "elastic", "frosted_glass_blur"}
  with pytest.raises(ValueError, match="glass_blur"):  # Checked at the call, before TFDS.
    corrupted.tfds_cifar10_c_sets(corruptions=("glass_blur",))
  with pytest.raises(ValueError, match="0"):
    corrupted.tfds_cifar10_c_sets(corruptions=("fog",), severities=(0,))


def test_cifar10_c_tfds_mock_counts_add_up():
  import tensorflow_datasets as tfds
  names, severities = ("brightness", "gaussian_noise"), (1, 2)
  with tfds.testing.mock_data(num_examples=8):
    sets = list(corrupted.tfds_cifar10_c_sets(corruptions=names, severities=severities))
    # Without a released folder, cifar10_c is read through TFDS, in the TFDS names' order.
    first = list(itertools.islice(corrupted.corrupted_sets("cifar10_c", ""), 2))
  assert [(n, s) for n, s, _, _ in sets] == [(n, s) for n in names for s in severities]
  assert [(n, s) for n, s, _, _ in first] == [("brightness", 1), ("brightness", 2)]
  for _, _, images, labels in sets + first:
    assert images.dtype == np.uint8 and images.shape == (8, 32, 32, 3)
    assert labels.dtype == np.int32 and labels.shape == (8,)
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES
  results = corruptions.evaluate_corruptions(_constant_image_predictor(3), sets)
  assert results["num_examples"] == 32
  assert sum(entry["num_examples"] for per in results["per_corruption"].values()
             for entry in per.values()) == 32
  assert set(results["per_corruption"]) == set(names)
  # The fake predictor's answer for each image is known: the pooled Top-1 is their hit rate.
  hits = [np.mean(images[:, 0, 0, 0].astype(np.int64) % NUM_CLASSES == labels)
          for _, _, images, labels in sets]
  assert results["top1"] == pytest.approx(np.mean(hits))
  assert 0.0 <= results["top1"] <= results["top5"] <= 1.0 and np.isfinite(results["nll"])


def test_cifar10_c_tfds_mock_deterministic_hand_count():
  import tensorflow_datasets as tfds

  def as_dataset(self, split, *args, **kwargs):
    del split, args, kwargs
    severity = int(self.builder_config.name.rsplit("_", 1)[1])
    images, labels = _fake_block(severity, 8, size=32)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels.astype(np.int64)})

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    sets = corrupted.tfds_cifar10_c_sets(corruptions=("fog", "snow"), severities=(1, 2))
    results = corruptions.evaluate_corruptions(_constant_image_predictor(), sets, "probs")
  assert results["num_examples"] == 32 and results["ensemble"] == "probs"
  assert results["top1"] == pytest.approx(6 / 32)  # 2 corruptions x (1 + 2) correct.
  assert results["nll"] == pytest.approx(_expected_nll(6, 32), rel=1e-5)
  assert results["per_corruption"]["snow"][2]["top1"] == pytest.approx(2 / 8)


def test_empty_or_repeated_corruption_set_is_named():
  empty = (np.zeros((0, 8, 8, 3), np.uint8), np.zeros((0,), np.int32))
  with pytest.raises(ValueError, match="Corruption 'fog' severity 3 has no examples"):
    corruptions.evaluate_corruptions(_constant_image_predictor(), [("fog", 3, *empty)])
  block = _fake_block(1, 4)
  with pytest.raises(ValueError, match="'fog' severity 1 was given twice"):
    corruptions.evaluate_corruptions(_constant_image_predictor(),
                                     [("fog", 1, *block), ("fog", 1, *block)])
  with pytest.raises(ValueError, match="no \\(corruption, severity"):
    corruptions.evaluate_corruptions(_constant_image_predictor(), [])
