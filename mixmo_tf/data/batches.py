"""The training batches of any epoch, by position: one data order for every engine and backend.

Epoch e is a permutation of the examples keyed by (seed, e) (`core.seeds.epoch_order`), cut into
batches of B/b unique raw examples, the incomplete last batch dropped (docs/method.md §6.1). With
MSDA, batch i also carries M x B partners from independent permutations of the whole set (§8). The
tf.distribute engine iterates these batches; the Keras engine reads them through a PyDataset
(`training.trainer.TrainBatches`). Batch i of epoch e is a pure function of (seed, e, i), so a run
resumed at any step reads exactly the batches the uninterrupted run would have read.
"""

from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np

from mixmo_tf.core import seeds


class EpochBatches:
  """Random access to the unique training batches of every epoch of `examples`.

  Args:
    examples: `data.datasets.InMemory`, `data.image_files.ImageFiles` (streamed), or anything
      with `__len__` and `take(indices, epoch)`.
    unique_batch_size: B/b, the unique examples per step.
    seed: the run seed (the root of the data order).
    partner_batch_size: M x B MSDA partners per batch (0: none).
  """

  def __init__(self, examples, unique_batch_size: int, seed: int, partner_batch_size: int = 0):
    self.examples = examples
    self.num_examples = len(examples)
    if not 1 <= unique_batch_size <= self.num_examples:
      raise ValueError(f"unique_batch_size={unique_batch_size} must be in [1, "
                       f"{self.num_examples}] (the number of examples).")
    if partner_batch_size < 0:
      raise ValueError(f"partner_batch_size must be >= 0, got {partner_batch_size}.")
    self.unique_batch_size = int(unique_batch_size)
    self.seed = seeds.check_seed(seed, "seed")
    self.partner_batch_size = int(partner_batch_size)
    self._orders = {}

  @property
  def num_batches(self) -> int:
    """Batches (steps) per epoch: N // (B / b) (docs/method.md §6.6)."""
    return self.num_examples // self.unique_batch_size

  def _order(self, epoch: int, stream: int) -> np.ndarray:
    key = (epoch, stream)
    if key not in self._orders:
      if len(self._orders) > 4:  # Keep the orders of the last few epochs only.
        self._orders.clear()
      if stream == 0:
        order = seeds.epoch_order(self.seed, epoch, self.num_examples)
      else:
        order = seeds.partner_order(self.seed, epoch, self.num_examples,
                                    self.num_batches * self.partner_batch_size)
      self._orders[key] = order
    return self._orders[key]

  def batch(self, epoch: int, index: int):
    """Batch `index` of the 0-based `epoch`: ((images, labels), partners), partners () without
    MSDA, else (partner_images, partner_labels)."""
    if not 0 <= index < self.num_batches:
      raise IndexError(f"batch index {index} out of range [0, {self.num_batches}).")
    size = self.unique_batch_size
    own = self.examples.take(self._order(epoch, 0)[index * size:(index + 1) * size], epoch)
    if not self.partner_batch_size:
      return own, ()
    p = self.partner_batch_size
    return own, self.examples.take(self._order(epoch, 1)[index * p:(index + 1) * p], epoch)

  def span(self, epoch: int, first: int, count: int) -> Iterator[Tuple]:
    """Batches first .. first + count - 1 of `epoch`, in order."""
    for index in range(first, first + count):
      yield self.batch(epoch, index)


def training_batches(examples, unique_batch_size: int, seed: int, partner_batch_size: int = 0):
  """The run's training batches: `EpochBatches` over examples with random access (in memory or
  image files), or a stream's own batches (`data.tfds.TFDSStream.epoch_batches`). Both have
  `num_batches` and `span(epoch, first, count)`."""
  if hasattr(examples, "epoch_batches"):
    return examples.epoch_batches(unique_batch_size, seed, partner_batch_size)
  return EpochBatches(examples, unique_batch_size, seed, partner_batch_size)
