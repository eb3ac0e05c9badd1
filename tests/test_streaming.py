"""Image files decoded per batch and the ImageNet recipe's data (docs/method.md §9.1): the random
resized crop's distribution, the centre crop, streamed batches equal to in-memory ones, ImageNet-
layout folders and TFDS imagenet2012 (mocked) on both engines, the whole test set evaluated."""

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from mixmo_tf import training
from mixmo_tf.data import datasets
from mixmo_tf.data.batches import EpochBatches
from mixmo_tf.data.image_files import ImageFiles, centre_box, random_resized_box
from mixmo_tf.evaluation.predict import Predictor, predict_batches
from tests.helpers import tiny_config


def test_random_resized_boxes_follow_the_recipe():
  """Area in [8%, 100%] of the image, aspect ratio in [3/4, 4/3] (log-uniform), inside the image;
  the same generator state gives the same box."""
  rng = np.random.default_rng(0)
  areas, ratios = [], []
  for _ in range(2000):
    left, top, right, bottom = random_resized_box(120, 90, rng)
    assert 0 <= left < right <= 120 and 0 <= top < bottom <= 90
    areas.append((right - left) * (bottom - top) / (120 * 90))
    ratios.append((right - left) / (bottom - top))
  assert 0.07 <= min(areas) and max(areas) <= 1.0
  assert 3 / 4 - 0.05 <= min(ratios) and max(ratios) <= 4 / 3 + 0.05
  square = [random_resized_box(100, 100, rng) for _ in range(2000)]
  logs = np.log([(r - l) / (b - t) for l, t, r, b in square])
  assert abs(np.mean(logs)) < 0.02  # log-uniform around 1: symmetric on a square image
  # Tall thin images: no box of the range fits, the centre crop with the ratio clamped.
  box = random_resized_box(10, 400, np.random.default_rng(1))
  assert box[2] - box[0] == 10 and abs(10 / (box[3] - box[1]) - 3 / 4) < 0.05
  again = [random_resized_box(120, 90, np.random.default_rng(5)) for _ in range(2)]
  assert again[0] == again[1]


def test_centre_crop_takes_the_middle_after_the_resize():
  new_w, new_h, box = centre_box(400, 300, 224)
  assert new_h == 256 and new_w == round(400 * 256 / 300)  # shorter side to 224 / 0.875
  assert box == ((new_w - 224) // 2, 16, (new_w - 224) // 2 + 224, 240)


def _tree(root, sizes, split_names=("train", "val"), per_class=6, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  for split in split_names:
    for c in range(classes):
      folder = root / split / f"n{c:02d}"
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(per_class if split == "train" else per_class - 1):
        h, w = sizes(rng)
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(
            folder / f"{i}.JPEG", quality=95)


def test_streamed_files_give_the_in_memory_pixels_and_batches(tmp_path):
  """--data_in_memory=false decodes each batch when it is read: the same pixels, hence the same
  batch i of epoch e, as the in-memory dataset."""
  _tree(tmp_path, lambda rng: (8, 8), ("train", "test"))
  memory = datasets.load(tiny_config(tmp_path, dataset="folder", data_dir=str(tmp_path),
                                     data_in_memory="true"))
  streamed = datasets.load(tiny_config(tmp_path, dataset="folder", data_dir=str(tmp_path),
                                       data_in_memory="false"))
  assert isinstance(streamed.train, ImageFiles) and isinstance(memory.train, datasets.InMemory)
  a, b = (EpochBatches(d.train, 4, seed=3) for d in (memory, streamed))
  for epoch, index in ((0, 0), (2, 3)):
    for x, y in zip(a.batch(epoch, index)[0], b.batch(epoch, index)[0]):
      np.testing.assert_array_equal(x, y)
  np.testing.assert_array_equal(np.concatenate([x for x, _ in streamed.test.batches(4)]),
                                memory.test.images)
  assert datasets.keep_in_memory("auto", 50000, 32)  # CIFAR-10: 150 MB stays in memory
  assert not datasets.keep_in_memory("auto", 1_281_167, 224)  # ImageNet: 190 GB streams
  with pytest.raises(ValueError, match="--data_in_memory='maybe'"):
    datasets.keep_in_memory("maybe", 1, 1)


def test_imagenet_folder_trains_on_both_engines_and_evaluates_every_test_image(tmp_path):
  """An ImageNet-layout folder (train/<wnid>, val/<wnid>, images of many sizes): random resized
  crops keyed by (seed, epoch, example), the same training on both engines, every one of the 15
  validation images evaluated (not a multiple of any batch)."""
  _tree(tmp_path / "inet", lambda rng: tuple(rng.integers(20, 60, 2)))
  data = datasets.load(tiny_config(tmp_path, dataset="imagenet", data_dir=str(tmp_path / "inet"),
                                   image_size=16))
  assert data.info.loader_crop == "imagenet" and data.info.crop_padding == 0
  first, again = data.train.take([0, 1], epoch=0)[0], data.train.take([0, 1], epoch=0)[0]
  other_epoch = data.train.take([0, 1], epoch=1)[0]
  assert first.shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other_epoch)
  results = {}
  for engine in ("custom", "keras"):
    config = tiny_config(tmp_path / engine, dataset="imagenet", data_dir=str(tmp_path / "inet"),
                         image_size=16, batch_size=8, epochs=2, lr_decay_epochs=(2,),
                         engine=engine)
    results[engine] = training.run(config)
  assert results["custom"]["weights_fingerprint"] == results["keras"]["weights_fingerprint"]
  assert results["custom"]["num_examples"] == 15
  network = training_network(tmp_path / "custom")
  logits, labels = predict_batches(Predictor.from_network(network, data.info), data.test,
                                   batch_size=4)
  assert logits.shape[0] == len(labels) == 15  # 4 + 4 + 4 + 3: the remainder is kept
  np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], 5))


def training_network(folder):
  from mixmo_tf.evaluation.predict import load_network
  return load_network(os.path.join(folder, "model.keras"))


def test_tfds_imagenet2012_streams_on_both_engines(tmp_path):
  """`--dataset=imagenet2012` (TFDS, mocked here): read as a stream with the ResNet crops, the
  same batches on both engines (one order from the seed), every validation image evaluated."""
  tfds = pytest.importorskip("tensorflow_datasets")
  results = {}
  with tfds.testing.mock_data(num_examples=24):
    for engine in ("custom", "keras"):
      config = tiny_config(tmp_path / engine, dataset="imagenet2012", data_dir=str(tmp_path),
                           image_size=16, batch_size=8, epochs=2, lr_decay_epochs=(2,),
                           engine=engine)
      results[engine] = training.run(config)
  assert results["custom"]["weights_fingerprint"] == results["keras"]["weights_fingerprint"]
  assert results["custom"]["global_step"] == 2 * (24 // 4)
  assert results["custom"]["num_examples"] == 24
  info = json.loads((tmp_path / "custom" / "data_info.json").read_text())
  assert (info["name"], info["image_shape"], info["loader_crop"]) == (
      "imagenet2012", [16, 16, 3], "imagenet")
  assert math.isclose(info["mean"][0], 0.485)
