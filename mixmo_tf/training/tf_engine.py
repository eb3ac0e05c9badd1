"""The tf.distribute engine (TensorFlow): MixMo steps under MirroredStrategy, multi-worker or TPU.

The default engine on the TensorFlow backend, the design card's custom loop. Per step, each
replica runs `core.step.member_batch` on its share of the unique batch, the mixed forward pass and
`core.step.replica_loss` under a GradientTape, then the optimizer update, under `strategy.run`
(docs/method.md §5-§6); gradients are summed over replicas. The run's policy (epochs, logs,
evaluation, checkpoints, the end) is `training.loop.RunLoop`'s; this engine trains spans of steps,
saves and restores tf.train checkpoints, and hands over its network.
"""

from __future__ import annotations

import functools
from typing import Dict, Optional

import keras
import tensorflow as tf

from mixmo_tf.config import Config
from mixmo_tf.core import optimizers, schedules, seeds
from mixmo_tf.core import step as step_lib
from mixmo_tf.models import adapt_info, build_from_config
from mixmo_tf.models.layers import set_batch_norm_sync
from mixmo_tf.run_folder import RunFolder
from mixmo_tf.training import loop, tf_distribute
from mixmo_tf.training.engines import backend_line


def loss_and_gradients(model, optimizer, spec: step_lib.StepSpec, inputs, targets, masks, kappa):
  """Mixed forward pass, `core.step.replica_loss` (Eq. 3 plus L2) and its gradients; returns
  (loss, gradients, number of correct member predictions / M) (docs/method.md §5)."""
  variables = model.trainable_variables
  with tf.GradientTape() as tape:
    logits = model(inputs + [masks], training=True)
    loss = step_lib.replica_loss(spec, logits, targets, kappa, variables)
    scaled = optimizer.scale_loss(loss)  # Identity unless a LossScaleOptimizer (float16).
  grads = tape.gradient(scaled, variables)
  correct = tf.reduce_sum(step_lib.correct_members(logits, targets)) / spec.num_members
  return loss, grads, correct


def apply_step(model, optimizer, spec: step_lib.StepSpec, inputs, targets, masks, kappa,
               grad_fn=None):
  """Gradients and the optimizer update on one replica's batch; returns (loss, accuracy share).

  `grad_fn` (same arguments as `loss_and_gradients` after `spec`) lets the caller pass an
  XLA-compiled copy of it.
  """
  grad_fn = grad_fn or functools.partial(loss_and_gradients, model, optimizer, spec)
  loss, grads, correct = grad_fn(inputs, targets, masks, kappa)
  optimizer.apply_gradients(zip(grads, model.trainable_variables))
  return loss, correct / tf.cast(spec.global_batch_size, tf.float32)


class TFDistributeEngine:
  """Network, optimizer, step counter and the distributed step of one run (see the module doc)."""

  def __init__(self, config: Config, info, strategy: tf.distribute.Strategy, folder: RunFolder):
    self.config, self.strategy = config, strategy
    self.steps_per_epoch = info.num_train // config.unique_batch_size
    if self.steps_per_epoch < 1:
      raise ValueError(f"--batch_size={config.batch_size} with batch_repetitions="
                       f"{config.batch_repetitions} needs more than {info.num_train} "
                       "training examples per epoch.")
    with strategy.scope():
      self.network = build_from_config(config, info)
      self.info = adapt_info(self.network, info)  # The normalisation the network expects.
      set_batch_norm_sync(self.network, config.sync_batch_norm)
      self.learning_rate = schedules.schedule_from_config(config, info.num_train)
      # The step counter is ours, not optimizer.iterations: a LossScaleOptimizer does not count
      # the steps it skips on overflow, and the LR, p(e), seeds and data position follow batches.
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                              aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      # SGD, momentum 0.9, Nesterov; by default in the official code's form (docs/method.md §7).
      self.optimizer = optimizers.make_optimizer(config.optimizer,
                                                 lambda: self.learning_rate(self.step))
      if config.precision == "mixed_float16":
        self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
      self.optimizer.build(self.network.trainable_variables)
      checkpoint = tf.train.Checkpoint(model=self.network, optimizer=self.optimizer,
                                       step=self.step)
    self.checkpoints = folder.tf_checkpoints(checkpoint, config.keep_checkpoints)
    self.spec = step_lib.StepSpec.create(config, self.info, self.network.mask_shape,
                                         strategy.num_replicas_in_sync)
    self._root = tf.constant(seeds.step_root(config.seed))
    grad_fn = functools.partial(loss_and_gradients, self.network, self.optimizer, self.spec)
    self._grad_fn = tf.function(grad_fn, jit_compile=True) if config.jit_compile else grad_fn
    # (unique batch, step, 1-based epoch) -> (loss, accuracy): one distributed step.
    self.train_step = tf.function(self._distributed_step)

  @property
  def global_step(self) -> int:
    return int(self.step.numpy())

  def restore(self) -> int:
    """Restores the newest intact checkpoint, if any; returns the global step."""
    self.checkpoints.restore()
    return self.global_step

  def save(self, step: int) -> str:
    return self.checkpoints.save(step)

  def _replica_step(self, images, labels, partners, step, epoch):
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    seed, batch_seed = step_lib.step_seeds(self._root, step, replica)
    patch_p = schedules.patch_probability(epoch, self.config.epochs, self.config.patch_probability)
    batch = step_lib.member_batch(self.spec, images, labels, partners, seed, batch_seed, patch_p)
    return apply_step(self.network, self.optimizer, self.spec, batch.inputs, batch.targets,
                      batch.masks, batch.kappa, grad_fn=self._grad_fn)

  def _distributed_step(self, batch, step, epoch):
    """One distributed step on a batch of unique examples; returns (loss, train accuracy)."""
    (images, labels), partners = batch if self.config.msda != "none" else (batch, ())
    loss, accuracy = self.strategy.run(self._replica_step,
                                       args=(images, labels, partners, step, epoch))
    self.step.assign_add(1)
    reduce = lambda v: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
    return reduce(loss), reduce(accuracy)

  def _dataset(self, batches, epoch: int, first: int, count: int) -> tf.data.Dataset:
    """The span's batches as a prefetched tf.data source (distributed over the replicas)."""
    msda = self.config.msda != "none"
    pick = (lambda b: b) if msda else (lambda b: b[0])  # ((images, labels), partners) or the pair.
    sample = next(iter(batches.span(epoch, first, 1)))  # For the shapes and dtypes.
    signature = tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape, tf.as_dtype(a.dtype)),
                                      pick(sample))
    ds = tf.data.Dataset.from_generator(
        lambda: (pick(b) for b in batches.span(epoch, first, count)),
        output_signature=signature).prefetch(2)
    if self.strategy.num_replicas_in_sync == 1 and not isinstance(
        self.strategy, tf.distribute.TPUStrategy):
      # One replica: nothing to split, and the multi-device iterator would wrap the batches in a
      # GeneratorDataset that tf.data cannot optimise (and warns about, every epoch).
      return ds
    options = tf.data.Options()
    # Every worker generates the same global batches and keeps its part of each.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return self.strategy.experimental_distribute_dataset(ds.with_options(options))

  def train(self, batches, epoch: int, first_batch: int, num_steps: int, report) -> None:
    """Trains batches first_batch .. first_batch + num_steps - 1 of the 0-based `epoch`."""
    step = epoch * self.steps_per_epoch + first_batch
    if step != self.global_step:
      raise RuntimeError(f"The engine is at step {self.global_step}, asked to train from {step}.")
    epoch_t = tf.constant(epoch + 1, tf.int64)
    for batch in self._dataset(batches, epoch, first_batch, num_steps):
      loss, accuracy = self.train_step(batch, tf.constant(step, tf.int64), epoch_t)
      report(step, loss, accuracy)
      step += 1


def run(config: Config, strategy: Optional[tf.distribute.Strategy] = None) -> Dict:
  """Trains `config` with this engine under `strategy` (default: the one --strategy names)."""
  from absl import logging
  strategy = strategy or tf_distribute.create_strategy(config.strategy, config.tpu)
  logging.info("%s", backend_line("tensorflow"))
  accelerator = any("GPU" in d or "TPU" in d for d in strategy.extended.worker_devices)
  config, folder, data, ood_sets = loop.start_run(
      config, "tensorflow", strategy.num_replicas_in_sync, accelerator,
      tf_distribute.is_chief(strategy), tf_distribute.worker_id(strategy))
  try:
    engine = TFDistributeEngine(config, data.info, strategy, folder)
  except BaseException:
    folder.abandon()
    raise
  return loop.RunLoop(config, engine, data, folder, ood_sets).run()
