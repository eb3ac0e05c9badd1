"""All TFDS access (TensorFlow): CIFAR-10, CIFAR-100, CIFAR-10-C, OOD test splits, as NumPy arrays.

A dataset already prepared under `--data_dir` (e.g. copied from another machine) is used as is and
never downloaded again. Otherwise TFDS downloads and prepares it there; when that fails (offline,
blocked, bad archive) the run stops with one DatasetUnavailableError that names the dataset, the
directory searched, the reason, and the two ways forward, instead of a traceback from deep inside
TFDS.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from mixmo_tf.core import seeds
from mixmo_tf.data.errors import DatasetUnavailableError

# Longest underlying reason quoted in a DatasetUnavailableError (one line).
_MAX_REASON_CHARS = 400
# Offline fails fast: TFDS's downloader retries a failed request 10 times with exponential
# backoff (212 s measured before the one message) and opens sockets without a timeout (a
# connection that hangs hangs the run). During a download: 1 retry, 5 s per socket operation
# (an idle connect or read; a slow but live download is not cut): offline ends within 30 s.
DOWNLOAD_RETRIES = 1
SOCKET_TIMEOUT_S = 5.0


@contextlib.contextmanager
def _fail_fast_downloads():
  """TFDS downloads with few retries and a timeout on every socket operation (requests' own
  default is none: a connection that hangs would hang the run)."""
  import socket

  import requests
  from tensorflow_datasets.core.download import downloader
  retries, timeout = downloader.MAX_RETRIES, socket.getdefaulttimeout()
  request = requests.Session.request

  def request_with_timeout(self, method, url, **kwargs):
    if kwargs.get("timeout") is None:
      kwargs["timeout"] = SOCKET_TIMEOUT_S
    return request(self, method, url, **kwargs)

  downloader.MAX_RETRIES = DOWNLOAD_RETRIES
  socket.setdefaulttimeout(SOCKET_TIMEOUT_S)  # Sockets opened without requests (ftp: urllib).
  requests.Session.request = request_with_timeout
  try:
    yield
  finally:
    downloader.MAX_RETRIES = retries
    socket.setdefaulttimeout(timeout)
    requests.Session.request = request


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
    with _fail_fast_downloads():
      builder.download_and_prepare()
  except ImportError:
    raise  # A broken installation (a missing module), not a download problem: keep its traceback.
  except Exception as error:  # pylint: disable=broad-except
    raise DatasetUnavailableError(unavailable_message(name, data_dir, builder, error)) from None
  return builder


def load_split(name: str, split: str, data_dir: Optional[str] = None,
               image_size: int = 0) -> Tuple[np.ndarray, np.ndarray, int]:
  """(uint8 images [N, H, W, C], int32 labels [N], number of classes) of a split, read once into
  memory in the files' fixed order. Prepares the dataset first if needed (see prepared_builder).
  `image_size`: RGB images resized to image_size^2 (`data.images.resize`'s rule), for sets whose
  images vary in size or channels (OOD sets)."""
  builder = prepared_builder(name, data_dir)
  ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
  if image_size:
    ds = ds.map(lambda x, y: (_rgb_at_size(x, image_size), y),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  images, labels = [], []
  for x, y in ds.batch(1024).prefetch(tf.data.AUTOTUNE):
    images.append(tf.cast(x, tf.uint8).numpy())
    labels.append(tf.cast(y, tf.int32).numpy())
  if not images:
    raise ValueError(f"TFDS dataset {name!r} split {split!r} has no examples.")
  num_classes = builder.info.features["label"].num_classes
  return np.concatenate(images), np.concatenate(labels), num_classes


def _rgb_at_size(image, size: int):
  """An image as RGB uint8 [size, size, 3]: grey tiled, alpha dropped, resized if needed."""
  if image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  elif image.shape[-1] != 3:  # RGBA -> RGB; unknown channels: grey -> RGB, else the first 3.
    image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]),
                    lambda: image[..., :3])
  same = tf.reduce_all(tf.shape(image)[:2] == size)
  image = tf.cond(same, lambda: image, lambda: tf.cast(
      tf.clip_by_value(tf.round(tf.image.resize(image, [size, size])), 0, 255), tf.uint8))
  return tf.ensure_shape(image, [size, size, 3])


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


# -- ImageNet (imagenet2012): streamed through tf.data ----------------------------------------


def _random_resized_crop(image, size: int, seed):
  """UB's / the ResNet recipe's training crop: a box of 8%-100% of the area, aspect 3/4-4/3, 10
  tries (else the whole image), from a stateless `seed`, resized to size x size."""
  begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed, min_object_covered=0.1,
      aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, extent)
  return tf.cast(tf.clip_by_value(tf.round(tf.image.resize(crop, [size, size])), 0, 255),
                 tf.uint8)


def _centre_crop(image, size: int):
  """The test crop: the centre size / (size + 32) of the shorter side, resized to size x size."""
  shape = tf.shape(image)
  side = tf.cast(tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) * size / (size + 32),
                 tf.int32)
  top, left = (shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2
  crop = tf.slice(image, [top, left, 0], [side, side, 3])
  return tf.cast(tf.clip_by_value(tf.round(tf.image.resize(crop, [size, size])), 0, 255),
                 tf.uint8)


class TFDSStream:
  """A TFDS split read as a stream (TFRecords have no random access): the training order of
  epoch e comes from file and buffer shuffles seeded by (seed, e), the crops from stateless seeds
  keyed by (seed, e, position), so a run resumed inside an epoch skips what it consumed and sees
  the same batches (docs/method.md §9.1)."""

  def __init__(self, builder, split: str, size: int, num_examples: int, train: bool,
               seed: int = 0):
    self.builder, self.split, self.size = builder, split, int(size)
    self.num_examples, self.train, self.seed = int(num_examples), train, int(seed)
    self.labels = None  # Known once read: `predict_batches` returns them.

  def __len__(self) -> int:
    return self.num_examples

  def _dataset(self, epoch: int):
    import tensorflow_datasets as tfds
    epoch_seed = seeds.stream_shuffle_seed(self.seed, epoch)
    read = tfds.ReadConfig(shuffle_seed=epoch_seed)
    ds = self.builder.as_dataset(split=self.split, as_supervised=True, read_config=read,
                                 shuffle_files=self.train)
    if not self.train:
      return ds.map(lambda x, y: (_centre_crop(x, self.size), tf.cast(y, tf.int32)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.shuffle(10_000, seed=epoch_seed, reshuffle_each_iteration=False).enumerate()
    root = tf.constant([self.seed, epoch], tf.int64)
    crop = lambda i, xy: (_random_resized_crop(
        xy[0], self.size, tf.random.experimental.stateless_fold_in(root, i)),
                          tf.cast(xy[1], tf.int32))
    return ds.map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def epoch_batches(self, unique_batch_size: int, seed: int, partner_batch_size: int = 0):
    """This stream as the run's training batches (`data.batches` interface)."""
    if partner_batch_size:
      raise ValueError("MSDA partners (--msda) need random access to the training set; "
                       f"TFDS {self.builder.name!r} is read as a stream: use --msda=none.")
    del seed  # Given at construction.
    return _StreamBatches(self, unique_batch_size)

  def batches(self, batch_size: int):
    """(images, labels) of the split in its order, every example once."""
    for x, y in self._dataset(0).batch(batch_size).prefetch(2).as_numpy_iterator():
      yield x, y


class _StreamBatches:

  def __init__(self, stream: TFDSStream, unique_batch_size: int):
    self.stream, self.unique_batch_size = stream, int(unique_batch_size)
    self.num_batches = stream.num_examples // self.unique_batch_size

  def span(self, epoch: int, first: int, count: int):
    ds = self.stream._dataset(epoch).batch(self.unique_batch_size, drop_remainder=True)
    for x, y in ds.skip(first).take(count).prefetch(2).as_numpy_iterator():
      yield (x, y), ()


def _num_examples(builder, split: str) -> int:
  """Examples in `split`: from the dataset info, else counted (as under tfds.testing.mock_data,
  whose info has no splits)."""
  try:
    return builder.info.splits[split].num_examples
  except KeyError:
    ds = builder.as_dataset(split=split)
    count = int(ds.cardinality())
    return count if count >= 0 else int(ds.reduce(0, lambda n, _: n + 1))


def imagenet2012(config, image_size: int, mean, std):
  """TFDS `imagenet2012` (prepared under --data_dir from its manual download folder) as streams
  with the ResNet preprocessing at `image_size`: (train, test, DataInfo)."""
  from mixmo_tf.data.info import DataInfo
  builder = prepared_builder("imagenet2012", config.data_dir)
  num_train, num_test = (_num_examples(builder, split) for split in ("train", "validation"))
  if config.train_subset:
    raise ValueError("--train_subset is not supported with --dataset=imagenet2012 (a stream); "
                     "use an ImageNet-layout folder with --dataset=imagenet.")
  info = DataInfo("imagenet2012", builder.info.features["label"].num_classes,
                  (image_size, image_size, 3), num_train, num_test, mean, std, crop_padding=0,
                  flip=True, loader_crop="imagenet")
  return (TFDSStream(builder, "train", image_size, num_train, True, config.seed),
          TFDSStream(builder, "validation", image_size, num_test, False), info)
