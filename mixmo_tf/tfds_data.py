"""All TFDS access: CIFAR-10, CIFAR-100 and CIFAR-10-C (docs/method.md §9).

A dataset already prepared under `--data_dir` (e.g. copied from another machine) is used as is and
never downloaded again. Otherwise TFDS downloads and prepares it there; when that fails (offline,
blocked, bad archive) the run stops with one DatasetUnavailableError that names the dataset, the
directory searched, the reason, and the two ways forward, instead of a traceback from deep inside
TFDS.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import tensorflow as tf

# Longest underlying reason quoted in a DatasetUnavailableError (one line).
_MAX_REASON_CHARS = 400


class DatasetUnavailableError(ValueError):
  """A TFDS dataset is not prepared under the data_dir and could not be downloaded there."""


def prepared_builder(name: str, data_dir: Optional[str] = None):
  """Returns the TFDS builder of `name` ("cifar100", "cifar10_corrupted/fog_1"), prepared.

  Uses the copy prepared under `data_dir` (TFDS's default directory when empty) if there is one;
  otherwise downloads and prepares it there. Raises DatasetUnavailableError if that fails.
  """
  import tensorflow_datasets as tfds
  builder = tfds.builder(name, data_dir=data_dir or None)
  # The exists() check first keeps is_prepared() from logging a warning about a missing folder.
  if builder.data_path.exists() and builder.is_prepared():
    return builder
  try:
    builder.download_and_prepare()
  except ImportError:
    raise  # A broken installation (a missing module), not a download problem: keep its traceback.
  except Exception as error:  # pylint: disable=broad-except
    raise DatasetUnavailableError(unavailable_message(name, data_dir, builder, error)) from None
  return builder


def load_split(name: str, split: str,
               data_dir: Optional[str] = None) -> Tuple[tf.data.Dataset, int, int]:
  """(dataset of (uint8 image, int32 label), number of examples, number of classes) of a split.

  Prepares the dataset first if needed (see prepared_builder); files are read in a fixed order.
  """
  builder = prepared_builder(name, data_dir)
  ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
  ds = ds.map(lambda x, y: (tf.cast(x, tf.uint8), tf.cast(y, tf.int32)))
  num_classes = builder.info.features["label"].num_classes
  return ds, count_examples(ds, builder.info, split), num_classes


def count_examples(ds: tf.data.Dataset, info, split: str) -> int:
  """Examples in `split`: from the dataset info, else counted (as under tfds.testing.mock_data,
  whose info has no splits)."""
  try:
    return info.splits[split].num_examples
  except KeyError:
    cardinality = int(ds.cardinality())
    return cardinality if cardinality >= 0 else int(ds.reduce(0, lambda n, _: n + 1))


def unavailable_message(name: str, data_dir: Optional[str], builder, error: BaseException) -> str:
  """The one error message: which dataset, where it was looked for, why it could not be
  downloaded (one line), and the two ways forward."""
  family = name.split("/")[0]
  corrupted = family == "cifar10_corrupted"
  flag = "--corruptions_dir" if corrupted else "--data_dir"  # Where the driver takes data_dir.
  root = str(builder.data_dir_root)
  where = f"{flag}={data_dir}" if data_dir else f"TFDS's default directory {root} ({flag} unset)"
  reason = " ".join(f"{type(error).__name__}: {error}".split())
  if len(reason) > _MAX_REASON_CHARS:
    reason = reason[:_MAX_REASON_CHARS - 3] + "..."
  if corrupted:
    other = "or skip the CIFAR-10-C evaluation with --corruptions=none."
  else:
    other = ("or train on an image tree instead: --dataset=folder --data_dir=ROOT with "
             "ROOT/train/<class>/<image> and ROOT/test/<class>/<image>.")
  return (f"TFDS dataset {name!r} is not prepared under {where} (looked for {builder.data_dir}) "
          f"and could not be downloaded there: {reason}\n"
          f"Either prepare it on a machine with network access, `tfds build {family} "
          f"--data_dir=DIR`, then copy DIR/{family} to {os.path.join(root, family)} here and run "
          f"again (a prepared copy is never downloaded again); {other}")
