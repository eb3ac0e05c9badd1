"""The TensorFlow custom training loop: `python -m mixmo_tf.train`'s driver on the TensorFlow backend.

One loop for every method (vanilla, MIMO, MixMo, MSDA), under a tf.distribute strategy
(MirroredStrategy by default); other backends train with `mixmo_tf.keras_loop`. `build_trainer`
validates the config, prepares the run folder, seeds and loads the data; `Trainer` coordinates:
the per-replica step (`mixmo_tf.step`) under `strategy.run`, the epoch loop, evaluation through
the one prediction path (`mixmo_tf.predict`) and the run folder (`mixmo_tf.run_dir`). Rerunning
the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import functools
import time
from typing import Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from mixmo_tf import data as data_lib
from mixmo_tf import distribute, metrics, optimizers, predict, run_common, schedules
from mixmo_tf import step as step_lib
from mixmo_tf.config import Config
from mixmo_tf.models import build_from_config
from mixmo_tf.models.common import set_batch_norm_sync
from mixmo_tf.run_common import HISTORY_KEYS, SUMMARY_KEYS, NonFiniteLossError  # noqa: F401
from mixmo_tf.run_dir import RunDir, log_resumed


class ProgressLog:
  """Progress lines, train summaries and the NaN check, every `log_every_steps` steps."""

  def __init__(self, config: Config, schedule, total_steps: int, writer, checkpoint_dir: str):
    self.config, self.schedule, self.total_steps = config, schedule, total_steps
    self.writer, self.checkpoint_dir = writer, checkpoint_dir
    self.losses: List[float] = []

  def window(self, window, seconds: float, epoch: int) -> None:
    """Logs [(step, loss, accuracy)] of the last steps; raises NonFiniteLossError on NaN / inf."""
    losses = np.array([float(l) for _, l, _ in window])
    self.losses.extend(losses.tolist())
    run_common.check_finite(losses, [s for s, _, _ in window], epoch,
                            tf.train.latest_checkpoint(self.checkpoint_dir))
    c = self.config
    step = window[-1][0] + 1
    loss, acc = float(losses.mean()), float(np.mean([float(a) for _, _, a in window]))
    rate = len(window) / max(seconds, 1e-9)
    eta = (self.total_steps - step) / max(rate, 1e-9)
    lr = float(self.schedule(step - 1))
    logging.info("step %d/%d epoch %d: loss %.4f, train acc %.3f, lr %.5f, %.2f steps/s, "
                 "%.0f img/s, ETA %s", step, self.total_steps, epoch + 1, loss, acc, lr, rate,
                 rate * c.batch_size, time.strftime("%H:%M:%S", time.gmtime(eta)))
    with self.writer.as_default(step=step):
      tf.summary.scalar("train/loss", loss)
      tf.summary.scalar("train/accuracy", acc)
      tf.summary.scalar("train/learning_rate", lr)
      tf.summary.scalar("train/patch_probability", float(schedules.patch_probability(
          epoch + 1, c.epochs, c.patch_probability)))
      tf.summary.scalar("train/images_per_second", rate * c.batch_size)


def resolve_precision(config: Config, strategy) -> Config:
  """`run_common.resolve_precision` for the strategy's devices (bf16 on GPU/TPU)."""
  accelerator = any("GPU" in d or "TPU" in d for d in strategy.extended.worker_devices)
  return run_common.resolve_precision(config, "tensorflow", accelerator)


def build_trainer(config: Config, strategy: Optional[tf.distribute.Strategy] = None) -> "Trainer":
  """Validates `config` (before any data is read), prepares the run folder, sets the seed and
  the dtype policy, loads the data and builds the Trainer."""
  strategy = strategy or distribute.create_strategy(config.strategy, config.tpu)
  config.validate(strategy.num_replicas_in_sync)
  config = resolve_precision(config, strategy)
  folder = RunDir.prepare(config, distribute.is_chief(strategy), distribute.worker_id(strategy))
  try:
    if config.corruptions == "cifar10_c":  # Fail now, not after training, if it cannot be had.
      from mixmo_tf import corruptions, tfds_data
      tfds_data.prepared_builder(f"cifar10_corrupted/{corruptions.CIFAR10_C_CORRUPTIONS[0]}_1",
                                 config.corruptions_dir or None)
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_dtype_policy(config.precision)
    data = data_lib.load(config)
    ood_sets = {}
    if config.ood:  # Read (and check) every OOD set now, not after training.
      from mixmo_tf import ood_data
      ood_sets = ood_data.ood_datasets(config.ood, ood_data.tfds_data_dir(config),
                                       data[2].image_shape)
    return Trainer(config, strategy, data, folder, ood_sets)
  except BaseException:
    folder.release()
    raise


class Trainer:
  """Trains and evaluates one configuration: a coordinator of the step, the data and the folder."""

  def __init__(self, config: Config, strategy: tf.distribute.Strategy, data, folder: RunDir,
               ood_sets: Optional[Dict] = None):
    self.config, self.strategy, self.run_dir = config, strategy, folder
    self.ood_sets = ood_sets or {}
    self.train_data, self.test_data, self.info = data
    self.steps_per_epoch = data_lib.steps_per_epoch(self.info, config.unique_batch_size)
    if self.steps_per_epoch < 1:
      raise ValueError(f"--batch_size={config.batch_size} with batch_repetitions="
                       f"{config.batch_repetitions} needs more than {self.info.num_train} "
                       "training examples per epoch.")
    self.total_steps = self.steps_per_epoch * config.epochs
    if config.max_steps:
      self.total_steps = min(self.total_steps, config.max_steps)
    with strategy.scope():
      self.model = build_from_config(config, self.info)
      set_batch_norm_sync(self.model, config.sync_batch_norm)
      self.schedule = schedules.WarmupPiecewiseSchedule(
          config.base_lr, self.steps_per_epoch, milestones=config.lr_decay_epochs,
          warmup_steps=schedules.warmup_steps(self.info.num_train, config.batch_size,
                                              config.batch_repetitions, config.lr_warmup_epochs),
          decay_factor=config.lr_decay_ratio)
      # The step counter is ours, not optimizer.iterations: a LossScaleOptimizer does not count
      # the steps it skips on overflow, and the LR, p(e), seeds and data position follow batches.
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                              aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      # SGD, momentum 0.9, Nesterov; by default in the official code's form (docs/method.md §7).
      self.optimizer = optimizers.make_optimizer(config.optimizer, lambda: self.schedule(self.step))
      if config.precision == "mixed_float16":
        self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
      self.optimizer.build(self.model.trainable_variables)
      self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                            step=self.step)
    self.manager = folder.checkpoint_manager(self.checkpoint, config.keep_checkpoints)
    self.spec = step_lib.StepSpec.create(config, self.info, self.model.mask_shape,
                                         strategy.num_replicas_in_sync)
    self._seed = tf.constant([config.seed, 0x5EED], tf.int32)
    grad_fn = functools.partial(step_lib.loss_and_gradients, self.model, self.optimizer, self.spec)
    self._grad_fn = tf.function(grad_fn, jit_compile=True) if config.jit_compile else grad_fn
    self.train_step = tf.function(self._train_step)
    self.predictor = predict.Predictor.from_keras(self.model, self.info)
    self.writer = folder.summary_writer()
    self.progress = ProgressLog(config, self.schedule, self.total_steps, self.writer,
                                folder.checkpoint_dir)

  @property
  def global_step(self) -> int:
    return int(self.step.numpy())

  @property
  def loss_history(self) -> List[float]:
    return self.progress.losses

  def _replica_step(self, images, labels, partners, step, epoch):
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    seed, batch_seed = step_lib.step_seeds(self._seed, step, replica)
    patch_p = schedules.patch_probability(epoch, self.config.epochs, self.config.patch_probability)
    batch = step_lib.member_batch(self.spec, images, labels, partners, seed, batch_seed, patch_p)
    return step_lib.apply_step(self.model, self.optimizer, self.spec, batch.inputs, batch.targets,
                               batch.masks, batch.kappa, grad_fn=self._grad_fn)

  def _train_step(self, batch, step, epoch):
    """One distributed step on a batch of the input pipeline; returns (loss, train accuracy)."""
    (images, labels), partners = batch if self.config.msda != "none" else (batch, ())
    loss, accuracy = self.strategy.run(self._replica_step,
                                       args=(images, labels, partners, step, epoch))
    self.step.assign_add(1)
    reduce = lambda v: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
    return reduce(loss), reduce(accuracy)

  def evaluate(self) -> Dict[str, float]:
    """Test metrics of the ensemble and of each member (docs/method.md §10)."""
    logits, labels = predict.predict_dataset(self.predictor, self.test_data, name="test set")
    return metrics.evaluate_logits(logits, labels, self.config.ensemble)

  def restore(self) -> int:
    """Restores the latest complete checkpoint, if any; returns the global step."""
    log_resumed(self.run_dir.restore(self.checkpoint), self.global_step)
    return self.global_step

  def train_epoch(self, epoch: int, start_step: int) -> bool:
    """Trains the 0-based `epoch` from `start_step`; returns False when max_steps stopped it."""
    c = self.config
    skip = start_step - epoch * self.steps_per_epoch
    if not 0 <= skip < self.steps_per_epoch:
      raise RuntimeError(f"Step {start_step} is not in epoch {epoch + 1} "
                         f"({self.steps_per_epoch} steps per epoch).")
    partner_batch = c.batch_size * c.num_members if c.msda != "none" else 0
    ds = data_lib.train_batches(self.train_data, self.info, c.unique_batch_size, c.seed, epoch,
                                skip_batches=skip, partner_batch_size=partner_batch)
    options = tf.data.Options()
    # In-memory data: shard by element across workers (each keeps its part of every batch).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    if self.strategy.num_replicas_in_sync == 1 and not isinstance(
        self.strategy, tf.distribute.TPUStrategy):
      # One replica: nothing to split, and the multi-device iterator would wrap the batches in a
      # GeneratorDataset that tf.data cannot optimise (and warns about, every epoch).
      dist = ds
    else:
      dist = self.strategy.experimental_distribute_dataset(ds.with_options(options))
    epoch_t = tf.constant(epoch + 1, tf.int64)
    step, window, t0 = start_step, [], time.time()
    for batch in dist:
      if step >= self.total_steps:
        return False
      loss, acc = self.train_step(batch, tf.constant(step, tf.int64), epoch_t)
      window.append((step, loss, acc))
      step += 1
      if step % c.log_every_steps == 0 or step == self.total_steps:
        self.progress.window(window, time.time() - t0, epoch)
        window, t0 = [], time.time()
    if window:
      self.progress.window(window, time.time() - t0, epoch)
    return step < self.total_steps

  def fit(self) -> Dict:
    """Trains to the end (resuming if a checkpoint exists), evaluates, writes every artifact;
    releases the run folder's lock however it ends."""
    try:
      return self._fit()
    finally:
      self.run_dir.release()

  def _fit(self) -> Dict:
    c = self.config
    self.run_dir.write_run_files(c, self.info)
    step = self.restore()
    history = self.run_dir.load_history(step)
    epoch = step // self.steps_per_epoch
    while step < self.total_steps:
      t0, start = time.time(), step
      running = self.train_epoch(epoch, step)
      step = self.global_step
      entry = {"epoch": epoch + 1, "step": step, "epoch_seconds": time.time() - t0,
               "epoch_images": (step - start) * c.batch_size}
      last = step >= self.total_steps or not running
      if (epoch + 1) % c.eval_frequency == 0 or last:
        entry.update(self._log_evaluation(epoch, step))
      history.append(entry)
      # History first: a resume keeps the entries up to its checkpoint's step, so a kill between
      # the two writes loses nothing (the other order lost the epoch's entry).
      self.run_dir.save_history(history)
      if (epoch + 1) % c.checkpoint_frequency == 0 or last:
        self.run_dir.save(self.manager, step)
      epoch += 1
      if not running:
        break
    return self._finish(history)

  def _log_evaluation(self, epoch: int, step: int) -> Dict[str, float]:
    results = self.evaluate()
    logging.info("epoch %d: test top1 %.4f, top5 %.4f, nll %.4f, members top1 %.4f", epoch + 1,
                 results["top1"], results["top5"], results["nll"], results["top1_members_mean"])
    with self.writer.as_default(step=step):
      for k in SUMMARY_KEYS:
        tf.summary.scalar(f"test/{k}", results[k])
    return {k: results[k] for k in HISTORY_KEYS if k in results}

  def _finish(self, history: List[Dict]) -> Dict:
    """Final evaluation (and corruptions), timing, results.json and the exported models."""
    c = self.config
    test_logits, labels = predict.predict_dataset(self.predictor, self.test_data, name="test set")
    results = metrics.evaluate_logits(test_logits, labels, c.ensemble)
    if self.ood_sets:  # docs/method.md §17: each set scored against the test set.
      from mixmo_tf import ood, ood_data
      results["ood"] = {name: ood.evaluate_ood(test_logits, logits, c.ensemble)
                        for name, logits in ood_data.ood_logits(self.predictor,
                                                                self.ood_sets).items()}
    if c.corruptions != "none":
      from mixmo_tf.evaluate import corruption_results
      results["corruptions"] = corruption_results(self.predictor, c.corruptions,
                                                  c.corruptions_dir, c.ensemble)
    results.update(run_common.run_summary(history, self.global_step, self.steps_per_epoch,
                                          self.model))
    self.run_dir.write_results(results)
    self.run_dir.write_models(self.model, self.info, c.ensemble)
    self.writer.flush()
    return results


def run(config: Config, strategy: Optional[tf.distribute.Strategy] = None) -> Dict:
  """Library entry point: train `config` to the end and return the test results."""
  return build_trainer(config, strategy).fit()
