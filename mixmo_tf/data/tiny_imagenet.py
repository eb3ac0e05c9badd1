"""Tiny ImageNet from the released `tiny-imagenet-200` folder (docs/method.md §9).

Train = `train/<wnid>/images/*.JPEG` (200 classes x 500); the 10,000 validation images are the test
set, labelled from `val/val_annotations.txt`. Class index = position of the wnid in sorted order.
`data.datasets` decodes the listed files into uint8 [64, 64, 3] arrays; grayscale JPEGs (a few
hundred in the release) become 3-channel RGB.
"""

from __future__ import annotations

import collections
import os
from typing import List, Sequence, Tuple

from mixmo_tf.data.images import list_images, subset_indices
from mixmo_tf.data.info import DataInfo

IMAGE_SIZE = 64
# Normalisation to [-1, 1] (docs/method.md §9: mean 0.5, std 0.5 per channel).
TINY_MEAN = (0.5, 0.5, 0.5)
TINY_STD = (0.5, 0.5, 0.5)


def read_wnids(data_dir: str) -> List[str]:
  """The class wnids of `data_dir/wnids.txt`, sorted: list index = class index (docs/method.md §9)."""
  path = os.path.join(data_dir, "wnids.txt")
  if not os.path.isfile(path):
    raise ValueError(f"Tiny ImageNet folder {data_dir!r} has no wnids.txt ({path}).")
  with open(path) as f:
    wnids = [line.strip() for line in f if line.strip()]
  if not wnids:
    raise ValueError(f"{path} lists no wnids.")
  duplicates = sorted(w for w, n in collections.Counter(wnids).items() if n > 1)
  if duplicates:
    raise ValueError(f"{path} lists these wnids more than once: {duplicates}.")
  return sorted(wnids)


def _list_train(data_dir: str, wnids: Sequence[str]) -> Tuple[List[str], List[int]]:
  """`train/<wnid>/images/*` for each class in sorted-wnid order; raises on a missing class."""
  paths, labels = [], []
  for label, wnid in enumerate(wnids):
    images_dir = os.path.join(data_dir, "train", wnid, "images")
    if not os.path.isdir(images_dir):
      raise ValueError(f"Tiny ImageNet class {wnid!r} (from wnids.txt) has no training images "
                       f"folder {images_dir}.")
    files = list_images(images_dir)
    paths += files
    labels += [label] * len(files)
  return paths, labels


def _list_val(data_dir: str, wnids: Sequence[str]) -> Tuple[List[str], List[int]]:
  """The validation (= test) images in annotation-file order, labelled by their wnid's index."""
  annotations = os.path.join(data_dir, "val", "val_annotations.txt")
  if not os.path.isfile(annotations):
    raise ValueError(f"Tiny ImageNet folder {data_dir!r} has no validation annotation file "
                     f"({annotations}).")
  index = {wnid: i for i, wnid in enumerate(wnids)}
  images_dir = os.path.join(data_dir, "val", "images")
  paths, labels, seen = [], [], set()
  with open(annotations) as f:
    for line_number, line in enumerate(f, start=1):
      fields = line.split()  # filename, wnid, then 4 bbox ints (tab-separated).
      if not fields:
        continue
      if len(fields) < 2:
        raise ValueError(f"{annotations} line {line_number}: expected 'filename<TAB>wnid...', "
                         f"got {line.rstrip()!r}.")
      filename, wnid = fields[0], fields[1]
      if wnid not in index:
        raise ValueError(f"{annotations} line {line_number}: wnid {wnid!r} (for {filename}) is "
                         f"not in wnids.txt.")
      if filename in seen:
        raise ValueError(f"{annotations} line {line_number}: {filename} is annotated twice.")
      seen.add(filename)
      path = os.path.join(images_dir, filename)
      if not os.path.isfile(path):
        raise ValueError(f"Validation image {path} (listed in {annotations} line {line_number}) "
                         f"does not exist.")
      paths.append(path)
      labels.append(index[wnid])
  if not paths:
    raise ValueError(f"{annotations} lists no validation images.")
  return paths, labels


def list_tiny_imagenet(data_dir: str):
  """Lists the released layout without decoding anything; raises ValueError naming what is wrong.

  Returns:
    (train_paths, train_labels, test_paths, test_labels, wnids) with `wnids` sorted.
  """
  wnids = read_wnids(data_dir)
  train_paths, train_labels = _list_train(data_dir, wnids)
  test_paths, test_labels = _list_val(data_dir, wnids)
  return train_paths, train_labels, test_paths, test_labels, wnids


def listing(data_dir: str, train_subset: int = 0):
  """(train_paths, train_labels, test_paths, test_labels, info) of the unpacked
  `tiny-imagenet-200` folder (docs/method.md §9), nothing decoded.

  `train_subset` > 0 keeps the fixed random subset of the training files that every loader keeps
  (`images.subset_indices`). Train augmentation: 4-pixel pad-crop and flip; normalisation
  mean = std = 0.5.
  """
  train_paths, train_labels, test_paths, test_labels, wnids = list_tiny_imagenet(data_dir)
  keep = subset_indices(len(train_paths), train_subset)
  train_paths = [train_paths[i] for i in keep]
  train_labels = [train_labels[i] for i in keep]
  info = DataInfo("tiny_imagenet", len(wnids), (IMAGE_SIZE, IMAGE_SIZE, 3), len(train_paths),
                  len(test_paths), TINY_MEAN, TINY_STD, crop_padding=4, flip=True,
                  class_names=tuple(wnids))
  return train_paths, train_labels, test_paths, test_labels, info
