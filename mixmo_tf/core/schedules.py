"""Learning-rate and patch-probability schedules of the official MixMo runs (docs/method.md §4, §7).

In `keras.ops`: both engines, their optimizers and every Keras backend share them.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
from keras import ops

# p(e) stays at p0 until e / E reaches 11/12, then decays linearly to 0 at the last epoch (Sec. 4).
PATCH_DECAY_START = 11.0 / 12.0


def patch_probability(epoch, total_epochs, p0):
  """p(e) for the 1-based epoch e: p0 while e/E < 11/12, then p0 * max(0, (1 - e/E) * 12).

  Works on Python numbers and on tensors (inside `tf.function` or `jax.jit`); docs/method.md §4.
  """
  rho = ops.cast(epoch, "float32") / float(total_epochs)
  decayed = p0 * ops.maximum(0.0, (1.0 - rho) / (1.0 - PATCH_DECAY_START))
  # rho < 11/12 tested on integers (12 e < 11 E), so p is exactly p0 up to the decay. int32 (JAX
  # has no int64 by default) holds 12 e for any e below 178 million epochs.
  before = 12 * ops.cast(epoch, "int32") < 11 * int(total_epochs)
  return ops.where(before, ops.cast(p0, "float32"), ops.cast(decayed, "float32"))


@keras.saving.register_keras_serializable(package="mixmo_tf")
class WarmupPiecewiseSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Step-wise linear warmup, then epoch-wise multiplicative decays (docs/method.md §7).

  Step k (1-based) uses lr0 * k / T during the T warmup steps. A milestone m (1-based epoch) means
  epochs >= m use the LR multiplied by `decay_factor` once more. Keras passes the optimizer's
  0-based iteration count, so step k = iterations + 1.
  """

  def __init__(self, base_learning_rate: float, steps_per_epoch: int, warmup_steps: int = 0,
               milestones: Sequence[int] = (), decay_factor: float = 0.1):
    self.base_learning_rate = float(base_learning_rate)
    self.steps_per_epoch = int(steps_per_epoch)
    self.warmup_steps = int(warmup_steps)
    self.milestones = tuple(int(m) for m in milestones)
    self.decay_factor = float(decay_factor)

  def __call__(self, step):
    k = ops.cast(step, "float32") + 1.0
    epoch = ops.floor((k - 1.0) / self.steps_per_epoch) + 1.0
    num_decays = ops.zeros((), "float32")
    for m in self.milestones:
      num_decays = num_decays + ops.cast(epoch >= m, "float32")
    lr = self.base_learning_rate * ops.power(self.decay_factor, num_decays)
    if self.warmup_steps > 0:
      lr = lr * ops.minimum(1.0, k / self.warmup_steps)
    return lr

  def get_config(self):
    return dict(base_learning_rate=self.base_learning_rate, steps_per_epoch=self.steps_per_epoch,
                warmup_steps=self.warmup_steps, milestones=list(self.milestones),
                decay_factor=self.decay_factor)


def warmup_steps(num_train: int, batch_size: int, batch_repetitions: int,
                 warmup_epochs: float = 1.0) -> int:
  """Warmup length in steps: warmup_epochs x b x ceil(N / B), as the official configs count it
  (782, 1564, 3128 on CIFAR's 50,000 at B = 64 for b = 1, 2, 4; docs/method.md §7.1)."""
  return int(round(warmup_epochs * batch_repetitions * math.ceil(num_train / batch_size)))


def schedule_from_config(config, num_train: int) -> WarmupPiecewiseSchedule:
  """The run's learning-rate schedule (docs/method.md §6.6, §7): lr0 = `config.base_lr`, epochs of
  N // (B / b) steps, `warmup_steps` of warmup, x `lr_decay_ratio` at each of `lr_decay_epochs`.
  One definition for both engines."""
  return WarmupPiecewiseSchedule(
      config.base_lr, num_train // config.unique_batch_size, milestones=config.lr_decay_epochs,
      warmup_steps=warmup_steps(num_train, config.batch_size, config.batch_repetitions,
                                config.lr_warmup_epochs),
      decay_factor=config.lr_decay_ratio)
