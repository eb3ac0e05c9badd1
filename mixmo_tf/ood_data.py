"""Out-of-distribution sets, read and scored against a run's test set (docs/method.md §17).

The TensorFlow side of OOD detection (`ood` stays NumPy-only). A set is named as in `--ood`: a TFDS
dataset (its `test` split: cifar10, cifar100, svhn_cropped, ...) or `folder:PATH`, any image tree
(PATH/test if it exists, else PATH, searched recursively; class folders are ignored). Every set is
resized to the model's input and goes through the one prediction path, `predict.predict_dataset`.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from mixmo_tf import ood
from mixmo_tf import tfds_data
from mixmo_tf.image_folder import IMAGE_EXTENSIONS, decode_folder
from mixmo_tf.predict import BATCH_SIZE, predict_dataset

FOLDER_PREFIX = "folder:"
FOLDER_LABEL = -1  # Folder sets carry no class: every label is -1 (OOD metrics never read labels).
TFDS_DATASETS = ("cifar10", "cifar100")  # Run datasets whose data_dir is a TFDS data_dir.


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


def list_images_recursively(root: str) -> List[str]:
  """Every image file under `root`, symlinked folders followed once; sorted folder by folder (the
  order of `image_folder.list_image_folder` on a class-folder tree). ValueError naming `root` if
  there is none."""
  paths, seen = [], set()
  for directory, subdirs, files in os.walk(root, followlinks=True):
    real = os.path.realpath(directory)
    if real in seen:  # A symlink loop, or the same folder linked twice.
      subdirs[:] = []
      continue
    seen.add(real)
    subdirs.sort()
    paths += [os.path.join(directory, f) for f in sorted(files)
              if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
  if not paths:
    raise ValueError(f"OOD folder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)}), "
                     "searched recursively.")
  return paths


def _square_size(image_shape: Sequence[int]) -> int:
  if len(image_shape) != 3 or image_shape[0] != image_shape[1] or image_shape[2] != 3:
    raise ValueError(f"OOD sets need a square RGB model input [S, S, 3], got image_shape "
                     f"{tuple(image_shape)}.")
  return int(image_shape[0])


def _tfds_test_split(name: str, data_dir: Optional[str], size: int) -> tf.data.Dataset:
  """The `test` split of TFDS dataset `name` as RGB uint8 [size, size, 3], labels int32."""
  import tensorflow_datasets as tfds
  try:
    ds, _, _ = tfds_data.load_split(name, "test", data_dir or None)
  except tfds.core.DatasetNotFoundError:
    raise ValueError(f"--ood={name!r} is neither a TFDS dataset nor folder:PATH (e.g. cifar10, "
                     "cifar100, svhn_cropped, folder:/data/ood).") from None
  except tfds_data.DatasetUnavailableError as error:
    # The training datasets' message, pointed at --ood_data_dir and at folder: sets.
    where, _, how = str(error).partition("\n")
    where = re.sub(r"--(data_dir|corruptions_dir)\b", "--ood_data_dir", where)
    how = how.rsplit("; or ", 1)[0] + "; or score an image tree instead: --ood=folder:PATH."
    raise tfds_data.DatasetUnavailableError(f"--ood={name!r}: {where}\n{how}") from None

  def to_model_input(image, label):
    if image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    elif image.shape[-1] != 3:  # RGBA -> RGB; unknown channels: grey -> RGB, else the first 3.
      image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]),
                      lambda: image[..., :3])
    same = tf.reduce_all(tf.shape(image)[:2] == size)
    image = tf.cond(same, lambda: image, lambda: tf.cast(
        tf.clip_by_value(tf.round(tf.image.resize(image, [size, size])), 0, 255), tf.uint8))
    return tf.ensure_shape(image, [size, size, 3]), label
  return ds.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def ood_dataset(name: str, data_dir: Optional[str],
                image_shape: Sequence[int]) -> tf.data.Dataset:
  """One OOD set as (uint8 image [H, W, 3], int32 label) pairs at the model's input size.

  `name`: a TFDS dataset (its test split, prepared under `data_dir`; DatasetUnavailableError with
  the offline message otherwise) or `folder:PATH` (decoded up front with the project's decoder, so
  a bad file is named; label FOLDER_LABEL). Raises ValueError naming an empty folder.
  """
  name = str(name).strip()
  size = _square_size(image_shape)
  if not name or name == FOLDER_PREFIX:
    raise ValueError(f"--ood={name!r} is empty; expected a TFDS name or folder:PATH.")
  if not name.startswith(FOLDER_PREFIX):
    return _tfds_test_split(name, data_dir, size)
  paths = list_images_recursively(folder_root(name))
  return decode_folder(paths, [FOLDER_LABEL] * len(paths), size)


def check_names(names: Sequence[str]) -> Tuple[str, ...]:
  """`names` stripped, empty entries dropped; ValueError naming a set listed twice."""
  names = tuple(str(n).strip() for n in names if str(n).strip())
  for name in names:
    if names.count(name) > 1:
      raise ValueError(f"--ood lists {name!r} {names.count(name)} times.")
  return names


def ood_datasets(names: Sequence[str], data_dir: Optional[str],
                 image_shape: Sequence[int]) -> Dict[str, tf.data.Dataset]:
  """{name: ood_dataset(name, ...)} in the order given, every set read before any prediction."""
  return {name: ood_dataset(name, data_dir, image_shape) for name in check_names(names)}


def ood_logits(predictor, datasets: Dict[str, tf.data.Dataset],
               batch_size: int = BATCH_SIZE) -> Dict[str, np.ndarray]:
  """{name: member logits [N, M, K]} of each set, through `predict.predict_dataset`."""
  return {name: predict_dataset(predictor, ds, batch_size, f"OOD set {name!r}")[0]
          for name, ds in datasets.items()}


def ood_results(predictor, names: Sequence[str], data_dir: Optional[str],
                image_shape: Sequence[int], in_logits,
                mode: str = "logits") -> Dict[str, Dict[str, Dict[str, float]]]:
  """{set: {score: {auroc, aupr_in, aupr_out, fpr95}}}: the in-distribution member logits
  `in_logits` [N, M, K] (the test set's) against each set of `names`, ensemble rule `mode`.

  Scores msp and entropy, plus mutual_information and disagreement when M > 1 (ood.evaluate_ood).
  """
  logits = ood_logits(predictor, ood_datasets(names, data_dir, image_shape))
  return {name: ood.evaluate_ood(in_logits, out, mode) for name, out in logits.items()}


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
