"""Out-of-distribution sets as uint8 arrays at the model's input size (docs/method.md §17).

A set is named as in `--ood`: `folder:PATH`, any image tree (PATH/test if it exists, else PATH,
searched recursively; class folders are ignored), read on every backend; or a TFDS dataset (its
`test` split: cifar10, cifar100, svhn_cropped, ...), which needs TensorFlow importable. Every set
is resized to the model's input; `evaluation` scores it through the one prediction path.
"""

from __future__ import annotations

import os
import re
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from mixmo_tf.data.datasets import InMemory, TFDS_DATASETS, decode, tfds_importable
from mixmo_tf.data.images import list_images_recursively

FOLDER_PREFIX = "folder:"
FOLDER_LABEL = -1  # Folder sets carry no class: every label is -1 (OOD metrics never read labels).


def tfds_data_dir(config) -> str:
  """Where TFDS OOD sets are read: config.ood_data_dir, else the run's data_dir if that is a TFDS
  data_dir (a cifar10 / cifar100 run), else '' (TFDS's default directory)."""
  if config.ood_data_dir:
    return config.ood_data_dir
  return config.data_dir if config.dataset in TFDS_DATASETS else ""


def folder_root(name: str) -> str:
  """The folder a `folder:PATH` set reads: PATH/test if it exists, else PATH (ValueError naming
  PATH if it is not a directory)."""
  path = name[len(FOLDER_PREFIX):]
  if not path or not os.path.isdir(path):
    raise ValueError(f"--ood={name!r}: {path!r} is not an existing directory.")
  test_dir = os.path.join(path, "test")
  return test_dir if os.path.isdir(test_dir) else path


def _square_size(image_shape: Sequence[int]) -> int:
  if len(image_shape) != 3 or image_shape[0] != image_shape[1] or image_shape[2] != 3:
    raise ValueError(f"OOD sets need a square RGB model input [S, S, 3], got image_shape "
                     f"{tuple(image_shape)}.")
  return int(image_shape[0])


def needs_tfds(names: Sequence[str]) -> Tuple[str, ...]:
  """The names of `names` that are TFDS datasets (not folder:PATH)."""
  return tuple(n for n in names if not str(n).strip().startswith(FOLDER_PREFIX))


def _tfds_test_split(name: str, data_dir: Optional[str], size: int) -> InMemory:
  """The `test` split of TFDS dataset `name` as RGB uint8 [size, size, 3], labels int32."""
  if not tfds_importable():
    raise ValueError(f"--ood={name!r} is a TensorFlow Datasets set, and TensorFlow is not "
                     "importable here: install tensorflow and tensorflow-datasets, or score an "
                     "image tree instead: --ood=folder:PATH.")
  import tensorflow_datasets as tfds_lib

  from mixmo_tf.data import tfds
  from mixmo_tf.data.errors import DatasetUnavailableError
  try:
    images, labels, _ = tfds.load_split(name, "test", data_dir or None, image_size=size)
  except tfds_lib.core.DatasetNotFoundError:
    raise ValueError(f"--ood={name!r} is neither a TFDS dataset nor folder:PATH (e.g. cifar10, "
                     "cifar100, svhn_cropped, folder:/data/ood).") from None
  except DatasetUnavailableError as error:
    # The training datasets' message, pointed at --ood_data_dir and at folder: sets.
    where, _, how = str(error).partition("\n")
    where = re.sub(r"--(data_dir|corruptions_dir)\b", "--ood_data_dir", where)
    how = how.rsplit("; or ", 1)[0] + "; or score an image tree instead: --ood=folder:PATH."
    raise DatasetUnavailableError(f"--ood={name!r}: {where}\n{how}") from None
  return InMemory(images, labels)


def ood_set(name: str, data_dir: Optional[str], image_shape: Sequence[int]) -> InMemory:
  """One OOD set as uint8 images [N, S, S, 3] at the model's input size (labels FOLDER_LABEL for
  folders); ValueError naming an empty or missing folder or an unknown name."""
  name = str(name).strip()
  size = _square_size(image_shape)
  if not name or name == FOLDER_PREFIX:
    raise ValueError(f"--ood={name!r} is empty; expected a TFDS name or folder:PATH.")
  if not name.startswith(FOLDER_PREFIX):
    return _tfds_test_split(name, data_dir, size)
  root = folder_root(name)
  try:
    paths = list_images_recursively(root)
  except ValueError as error:
    raise ValueError(f"--ood={name!r}: OOD folder {error}") from None
  return InMemory(decode(paths, size), np.full(len(paths), FOLDER_LABEL, np.int32))


def check_names(names: Sequence[str]) -> Tuple[str, ...]:
  """`names` stripped, empty entries dropped; ValueError naming a set listed twice."""
  names = tuple(str(n).strip() for n in names if str(n).strip())
  for name in names:
    if names.count(name) > 1:
      raise ValueError(f"--ood lists {name!r} {names.count(name)} times.")
  return names


def ood_sets(names: Sequence[str], data_dir: Optional[str],
             image_shape: Sequence[int]) -> Dict[str, InMemory]:
  """{name: ood_set(name, ...)} in the order given, every set read before any prediction."""
  return {name: ood_set(name, data_dir, image_shape) for name in check_names(names)}


def file_stems(names: Sequence[str]) -> Dict[str, str]:
  """{set name: a file-name-safe stem}: the TFDS name, or 'folder_' + the folder's base name;
  a stem already taken gets a '_2', '_3', ... suffix."""
  stems: Dict[str, str] = {}
  for name in names:
    base = (f"folder_{os.path.basename(os.path.normpath(name[len(FOLDER_PREFIX):]))}"
            if name.startswith(FOLDER_PREFIX) else name)
    base = re.sub(r"[^A-Za-z0-9.-]+", "_", base).strip("_.") or "set"
    stem, count = base, 1
    while stem in stems.values():
      count += 1
      stem = f"{base}_{count}"
    stems[name] = stem
  return stems
