"""`python -m mixmo_tf.train`: the one training driver for every method (vanilla, MIMO, MixMo, MSDA).

A custom loop under a tf.distribute strategy (MirroredStrategy by default), one small function per
concern: `_replica_step` (repetition, augmentation, masks, forward, weighted loss, gradients),
`_train_step` (strategy.run), `train_epoch`, `evaluate`, `fit`. Every run directory holds the flags,
TensorBoard summaries, checkpoints, `results.json`, `model.keras` and a SavedModel; rerunning the
same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
import keras
from absl import logging

from mixmo_tf import data as data_lib
from mixmo_tf import export, losses, metrics, msda, schedules
from mixmo_tf.config import ARCHITECTURE_KEYS, Config
from mixmo_tf.mixing import sample_masks
from mixmo_tf.models import build_model

EVAL_BATCH_SIZE = 500


class NonFiniteLossError(RuntimeError):
  """Raised when the training loss becomes NaN or infinite."""


def create_strategy(config: Config) -> tf.distribute.Strategy:
  """The tf.distribute strategy named by --strategy (only the driver chooses it)."""
  if config.strategy == "mirrored":
    return tf.distribute.MirroredStrategy()
  if config.strategy == "multi_worker":
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu)
  tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == "chief" or (resolver.task_type == "worker" and
                                           resolver.task_id == 0 and
                                           "chief" not in resolver.cluster_spec().as_dict())


def prepare_output_dir(config: Config) -> None:
  """Creates output_dir, or checks that an existing run there was made with compatible flags.

  Resuming with another architecture or dataset fails before training, naming the differing
  flags; nothing is overwritten. --overwrite deletes the old run first.
  """
  path = config.output_dir
  saved = os.path.join(path, "config.json")
  if config.overwrite and os.path.isdir(path):
    shutil.rmtree(path)
  if os.path.exists(saved):
    with open(saved) as f:
      previous = json.load(f)
    differing = [k for k in ARCHITECTURE_KEYS
                 if k in previous and previous[k] != getattr(config, k)]
    if differing:
      details = ", ".join(f"--{k}: {previous[k]!r} there, {getattr(config, k)!r} now"
                          for k in differing)
      raise ValueError(f"{path} holds a run with other flags ({details}). Use another "
                       "--output_dir, or --overwrite to delete that run.")
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, ".write_test")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"--output_dir={path!r} is not writable: {e}") from None


def write_json_atomic(path: str, payload) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


class Trainer:
  """Trains and evaluates one MixMo configuration."""

  def __init__(self, config: Config, strategy: Optional[tf.distribute.Strategy] = None):
    self.config = config
    self.strategy = strategy or create_strategy(config)
    self.num_replicas = self.strategy.num_replicas_in_sync
    config.validate(self.num_replicas)
    self.chief = is_chief(self.strategy)
    if self.chief:
      prepare_output_dir(config)
    else:
      os.makedirs(config.output_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_dtype_policy(config.precision)

    self.train_data, self.test_data, self.info = data_lib.load(config)
    self.steps_per_epoch = data_lib.steps_per_epoch(self.info, config.unique_batch_size)
    if self.steps_per_epoch < 1:
      raise ValueError(f"--batch_size={config.batch_size} with batch_repetitions="
                       f"{config.batch_repetitions} needs more than {self.info.num_train} "
                       "training examples per epoch.")
    self.total_steps = self.steps_per_epoch * config.epochs
    if config.max_steps:
      self.total_steps = min(self.total_steps, config.max_steps)

    with self.strategy.scope():
      self.model = build_model(config.model, **self._model_kwargs())
      self.schedule = schedules.WarmupPiecewiseSchedule(
          config.base_lr, self.steps_per_epoch,
          warmup_steps=self.warmup_steps(),
          milestones=config.lr_decay_epochs, decay_factor=config.lr_decay_ratio)
      # The step counter is ours, not optimizer.iterations: a LossScaleOptimizer does not count
      # the steps it skips on overflow, and the LR, p(e), seeds and data position follow batches.
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                              aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self.optimizer = keras.optimizers.SGD(lambda: self.schedule(self.step), momentum=0.9,
                                            nesterov=True)
      if config.precision == "mixed_float16":
        self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
      self.optimizer.build(self.model.trainable_variables)
      self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                            step=self.step)
    # Every worker restores from the chief's directory; only the chief keeps what it writes.
    # Other workers must take part in the (collective) save, so they write throw-away copies.
    self.checkpoint_dir = os.path.join(config.output_dir, "checkpoints")
    save_dir = self.checkpoint_dir if self.chief else os.path.join(
        config.output_dir, f"tmp_worker_{self.strategy.cluster_resolver.task_id}")
    self.manager = tf.train.CheckpointManager(self.checkpoint, save_dir,
                                              max_to_keep=config.keep_checkpoints)
    self.loss_history = []
    self._seed = tf.constant([config.seed, 0x5EED], tf.int32)
    self._grad_fn = tf.function(self._loss_and_grads, jit_compile=True) if config.jit_compile \
        else self._loss_and_grads
    self._train_step_fn = tf.function(self._train_step)
    self._eval_step_fn = tf.function(self._eval_step)
    writer_dir = os.path.join(config.output_dir, "tensorboard" if self.chief else "tmp_tensorboard")
    self.writer = tf.summary.create_file_writer(writer_dir)

  def _model_kwargs(self):
    c, info = self.config, self.info
    kwargs = dict(num_members=c.num_members, num_classes=info.num_classes,
                  image_shape=info.image_shape, width=c.width)
    if c.model == "wide_resnet":
      kwargs["depth"] = c.depth
    return kwargs

  def warmup_steps(self) -> int:
    """Warmup length: b x ceil(N / B) steps per warmup epoch, as the official configs (782, 1564,
    3128 on CIFAR for b = 1, 2, 4; REFERENCE 7.1)."""
    c = self.config
    return int(round(c.lr_warmup_epochs * c.batch_repetitions *
                     math.ceil(self.info.num_train / c.batch_size)))

  @property
  def global_step(self) -> int:
    return int(self.step.numpy())

  # -- The train step ---------------------------------------------------------------------------

  def _inputs_and_targets(self, images, labels, partners, seed, batch_seed, patch_p):
    """Batch repetition, per-copy augmentation, optional MSDA and feature masks for one replica."""
    c, info = self.config, self.info
    seed_rep, seed_aug, seed_msda, seed_mask = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    num_unique = tf.shape(images)[0]
    indices = data_lib.member_indices(num_unique, c.num_members, c.batch_repetitions,
                                      c.input_repetition_probability, seed_rep)  # [M, B]
    batch = tf.shape(indices)[1]
    mask_h, mask_w = self.model.mask_shape
    masks, kappa = sample_masks(batch, mask_h, mask_w, c.num_members, c.mixing, c.alpha,
                                patch_p, seed_mask, batch_seed=batch_seed)
    member_inputs, member_targets = [], []
    aug_seeds = tf.random.experimental.stateless_split(seed_aug, 2 * c.num_members)
    msda_seeds = tf.random.experimental.stateless_split(seed_msda, c.num_members)
    for i in range(c.num_members):
      x = data_lib.random_crop_flip(tf.gather(images, indices[i]), aug_seeds[i],
                                    info.crop_padding, info.flip)
      y = tf.one_hot(tf.gather(labels, indices[i]), info.num_classes)
      if c.msda != "none":
        partner_x, partner_y = partners[0][i * batch:(i + 1) * batch], partners[1][
            i * batch:(i + 1) * batch]
        partner_x = data_lib.random_crop_flip(partner_x, aug_seeds[c.num_members + i],
                                              info.crop_padding, info.flip)
        x, y = msda.apply_msda(x, y, partner_x, tf.one_hot(partner_y, info.num_classes),
                               msda_seeds[i], c.msda, c.msda_alpha, c.msda_probability,
                               feature_mask=masks[:, i] if c.num_members > 1 else None)
      member_inputs.append(data_lib.normalize(x, info.mean, info.std))
      member_targets.append(y)
    return member_inputs, tf.stack(member_targets, axis=1), masks, kappa

  def _loss_and_grads(self, inputs, targets, masks, kappa):
    c = self.config
    variables = self.model.trainable_variables
    with tf.GradientTape() as tape:
      logits = self.model(inputs + [masks], training=True)
      per_example = losses.mixmo_loss(targets, logits, kappa, c.weight_root)
      loss = tf.nn.compute_average_loss(per_example, global_batch_size=c.batch_size)
      if c.l2:
        # Gradients are summed over replicas: each replica carries 1/R of the penalty.
        loss += c.l2 * losses.l2_penalty(variables) / self.num_replicas
      scaled = self.optimizer.scale_loss(loss) if hasattr(self.optimizer, "scale_loss") else loss
    grads = tape.gradient(scaled, variables)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1), tf.argmax(targets, -1)), tf.float32)
    return loss, grads, tf.reduce_sum(tf.reduce_mean(correct, axis=1))

  def _replica_step(self, images, labels, partners, step, epoch):
    c = self.config
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    seed = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(self._seed, step), replica)
    patch_p = schedules.patch_probability(epoch, c.epochs, c.patch_probability)
    batch_seed = tf.random.experimental.stateless_fold_in(self._seed, step)  # shared by replicas
    inputs, targets, masks, kappa = self._inputs_and_targets(images, labels, partners, seed,
                                                             batch_seed, patch_p)
    return self._apply_step(inputs, targets, masks, kappa)

  def _apply_step(self, inputs, targets, masks, kappa):
    """Forward, weighted loss, gradients and the optimizer update on one replica's batch."""
    loss, grads, correct = self._grad_fn(inputs, targets, masks, kappa)
    self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
    return loss, correct / tf.cast(self.config.batch_size, tf.float32)

  def _train_step(self, batch, step, epoch):
    (images, labels), partners = batch if self.config.msda != "none" else (batch, ())
    loss, accuracy = self.strategy.run(self._replica_step,
                                       args=(images, labels, partners, step, epoch))
    self.step.assign_add(1)
    reduce = lambda v: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
    return reduce(loss), reduce(accuracy)

  # -- Evaluation -------------------------------------------------------------------------------

  def _eval_step(self, images):
    x = data_lib.preprocess_eval(images, self.info)
    logits = self.model([x] * self.config.num_members, training=False)
    return tf.cast(logits, tf.float32)

  def predict_test(self):
    """Member logits [N, M, K] and labels [N] over the whole test set (inference path, Sec. 3.1)."""
    ds = self.test_data.batch(EVAL_BATCH_SIZE).prefetch(data_lib.AUTOTUNE)
    all_logits, all_labels = [], []
    for images, labels in ds:
      all_logits.append(self._eval_step_fn(images).numpy())
      all_labels.append(labels.numpy())
    return np.concatenate(all_logits), np.concatenate(all_labels)

  def evaluate(self) -> Dict[str, float]:
    logits, labels = self.predict_test()
    return metrics.evaluate_logits(logits, labels, self.config.ensemble)

  # -- Loop ------------------------------------------------------------------------------------

  def restore(self) -> int:
    """Restores the latest complete checkpoint, if any; returns the global step."""
    latest = tf.train.latest_checkpoint(self.checkpoint_dir)
    if latest:
      self.checkpoint.restore(latest).assert_existing_objects_matched()
      logging.info("Resumed from %s at step %d.", latest, self.global_step)
    return self.global_step

  def _save(self) -> str:
    path = self.manager.save(checkpoint_number=self.global_step)
    if not self.chief:
      shutil.rmtree(self.manager.directory, ignore_errors=True)
    return path

  def weights_fingerprint(self) -> str:
    """SHA-256 of the trainable weights, which every replica and worker must share.

    (BN moving statistics are per replica, as batch statistics are, and are left out.)
    """
    import hashlib
    digest = hashlib.sha256()
    for weight in self.model.trainable_weights:
      digest.update(np.ascontiguousarray(weight.numpy(), np.float32).tobytes())
    return digest.hexdigest()[:16]

  def train_epoch(self, epoch: int, start_step: int, history: list) -> bool:
    """Trains the 0-based `epoch` from `start_step`; returns False when max_steps stopped it."""
    c = self.config
    skip = start_step - epoch * self.steps_per_epoch
    if not 0 <= skip < self.steps_per_epoch:
      raise RuntimeError(f"Step {start_step} is not in epoch {epoch + 1} "
                         f"({self.steps_per_epoch} steps per epoch).")
    partner_batch = c.batch_size * c.num_members if c.msda != "none" else 0
    augmix = (c.augmix_width, c.augmix_depth, c.augmix_severity) if c.augmix else None
    ds = data_lib.train_batches(self.train_data, self.info, c.unique_batch_size, c.seed, epoch,
                                skip_batches=skip, partner_batch_size=partner_batch,
                                augmix=augmix)
    options = tf.data.Options()
    # In-memory data: shard by element across workers (each keeps its part of every batch).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dist = self.strategy.experimental_distribute_dataset(ds.with_options(options))
    epoch_t = tf.constant(epoch + 1, tf.int64)
    step = start_step
    window, t0 = [], time.time()
    for batch in dist:
      if step >= self.total_steps:
        return False
      loss, acc = self._train_step_fn(batch, tf.constant(step, tf.int64), epoch_t)
      window.append((step, loss, acc))
      step += 1
      if step % c.log_every_steps == 0 or step == self.total_steps:
        self._log_window(window, time.time() - t0, epoch)
        window, t0 = [], time.time()
    if window:
      self._log_window(window, time.time() - t0, epoch)
    return step < self.total_steps

  def _log_window(self, window, seconds, epoch):
    losses_ = np.array([float(l) for _, l, _ in window])
    self.loss_history.extend(losses_.tolist())
    bad = np.flatnonzero(~np.isfinite(losses_))
    if bad.size:
      step = window[bad[0]][0] + 1
      raise NonFiniteLossError(
          f"Loss became {losses_[bad[0]]} at step {step} (epoch {epoch + 1}); training stopped. "
          f"The last good checkpoint is kept intact: "
          f"{tf.train.latest_checkpoint(self.checkpoint_dir)}.")
    step = window[-1][0] + 1
    loss, acc = float(losses_.mean()), float(np.mean([float(a) for _, _, a in window]))
    rate = len(window) / max(seconds, 1e-9)
    eta = (self.total_steps - step) / max(rate, 1e-9)
    lr = float(self.schedule(step - 1))
    logging.info("step %d/%d epoch %d: loss %.4f, train acc %.3f, lr %.5f, %.2f steps/s, "
                 "%.0f img/s, ETA %s", step, self.total_steps, epoch + 1, loss, acc, lr, rate,
                 rate * self.config.batch_size, time.strftime("%H:%M:%S", time.gmtime(eta)))
    with self.writer.as_default(step=step):
      tf.summary.scalar("train/loss", loss)
      tf.summary.scalar("train/accuracy", acc)
      tf.summary.scalar("train/learning_rate", lr)
      tf.summary.scalar("train/patch_probability", float(schedules.patch_probability(
          epoch + 1, self.config.epochs, self.config.patch_probability)))
      tf.summary.scalar("train/images_per_second", rate * self.config.batch_size)

  def fit(self) -> Dict:
    """Trains to the end (resuming if a checkpoint exists), evaluates, writes every artifact."""
    c = self.config
    if self.chief:
      with open(os.path.join(c.output_dir, "flags.txt"), "w") as f:
        f.write(c.as_flagfile())
      with open(os.path.join(c.output_dir, "config.json"), "w") as f:
        f.write(c.to_json())
      export.save_data_info(self.info, os.path.join(c.output_dir, "data_info.json"))
    step = self.restore()
    history_path = os.path.join(c.output_dir, "history.json")
    history = []
    if os.path.exists(history_path):
      with open(history_path) as f:
        history = [h for h in json.load(f) if h["step"] <= step]
    train_time = sum(h.get("epoch_seconds", 0.0) for h in history)
    train_images = sum(h.get("epoch_images", 0) for h in history)
    epoch = step // self.steps_per_epoch
    while step < self.total_steps:
      t0, start = time.time(), step
      running = self.train_epoch(epoch, step, history)
      step = self.global_step
      seconds = time.time() - t0
      train_time += seconds
      train_images += (step - start) * c.batch_size
      entry = {"epoch": epoch + 1, "step": step, "epoch_seconds": seconds,
               "epoch_images": (step - start) * c.batch_size}
      last = step >= self.total_steps or not running
      if (epoch + 1) % c.eval_frequency == 0 or last:
        results = self.evaluate()
        entry.update({k: results[k] for k in ("top1", "top5", "nll", "top1_members_mean")})
        logging.info("epoch %d: test top1 %.4f, top5 %.4f, nll %.4f, members top1 %.4f",
                     epoch + 1, results["top1"], results["top5"], results["nll"],
                     results["top1_members_mean"])
        with self.writer.as_default(step=step):
          for k in ("top1", "top5", "nll", "ece", "top1_members_mean"):
            tf.summary.scalar(f"test/{k}", results[k])
      history.append(entry)
      if (epoch + 1) % c.checkpoint_frequency == 0 or last:
        self._save()
      if self.chief:
        write_json_atomic(history_path, history)
      epoch += 1
      if not running:
        break
    results = self.evaluate()
    if c.corruptions != "none":
      from mixmo_tf import evaluate
      results["corruptions"] = evaluate.corruption_results(
          evaluate.Predictor.from_keras(self.model, self.info), c.corruptions, c.corruptions_dir,
          c.ensemble)
    results.update(train_seconds=train_time,
                   train_images_per_second=train_images / train_time if train_time else None,
                   global_step=self.global_step, epochs_completed=self.global_step /
                   self.steps_per_epoch, test_top1_per_epoch=[
                       (h["epoch"], h["top1"]) for h in history if "top1" in h])
    results["weights_fingerprint"] = self.weights_fingerprint()
    logging.info("Weights fingerprint %s at step %d.", results["weights_fingerprint"],
                 self.global_step)
    if self.chief:
      write_json_atomic(os.path.join(c.output_dir, "results.json"), results)
      self.model.save(os.path.join(c.output_dir, "model.keras"))
      self.model.folded().save(os.path.join(c.output_dir, "model_folded.keras"))
      export.export_saved_model(self.model, self.info, os.path.join(c.output_dir, "saved_model"),
                                ensemble=c.ensemble)
    self.writer.flush()
    return results


def run(config: Config, strategy: Optional[tf.distribute.Strategy] = None) -> Dict:
  """Library entry point: train `config` to the end and return the test results."""
  return Trainer(config, strategy).fit()


def main(argv):
  del argv
  from absl import flags
  from mixmo_tf.config import config_from_flags
  config = config_from_flags(flags.FLAGS)
  config.validate()  # Early, before any strategy or data; validated again with the replicas.
  results = run(config)
  logging.info("Final test metrics: %s", json.dumps(
      {k: v for k, v in results.items() if isinstance(v, (int, float))}, sort_keys=True))
  if config.strategy == "multi_worker":
    # MultiWorkerMirroredStrategy processes linger for seconds at exit (PLATFORM_NOTES); all
    # files are written and closed by now.
    logging.flush()
    os._exit(0)


if __name__ == "__main__":
  from absl import app
  from mixmo_tf.config import define_flags
  define_flags()
  app.run(main)
