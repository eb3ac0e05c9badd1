"""Keras-native MixMo training: `MixMoTrainer`, a `keras.Model` whose `fit` runs the MixMo step.

For Keras users, on every Keras backend (written in `keras.ops`, no backend-specific
`train_step`): the trainer wraps a MixMo network and does, inside Keras' own train step, what the
tf.distribute engine (`training.tf_engine`) does per step: batch repetition, pairing and
per-copy augmentation (docs/method.md §6), the feature masks (§3) and the w_r-weighted loss plus
L2 (§5), with the same functions (`core.step`). It is also the Keras engine's step
(`training.keras_engine`). Standard callbacks (TensorBoard, History, CSVLogger, EarlyStopping, ...)
then work:

  network = mixmo_tf.build_model("wide_resnet", depth=10, width=2, num_members=2,
                                 num_classes=10, image_shape=(8, 8, 3))
  spec = step.StepSpec.create(config, info, network.mask_shape)
  batches = train_arrays_dataset(images, labels, config.unique_batch_size, config.seed)
  trainer = MixMoTrainer(network, spec, seed=config.seed, steps_per_epoch=len(batches),
                         epochs=config.epochs, patch_probability=config.patch_probability)
  trainer.compile(optimizer=optimizers.make_optimizer("pytorch", schedule))
  trainer.fit(batches, epochs=config.epochs, callbacks=[keras.callbacks.TensorBoard(logdir)])
  logits = trainer.network.predict([x_test] * 2)  # [N, M, K]; x_test normalised.

(`trainer_from_config(config, info)` builds and compiles all of it as the tf.distribute engine
does.)

Step t (0-based, the trainer's own counter) matches the tf.distribute engine's step t on replica
0: seeds `step.step_seeds(seeds.step_root(seed), t, 0)`, epoch e = t // steps_per_epoch + 1 for
p(e) (§4), `step.member_batch`, the mixed forward pass, `step.replica_loss` (the batch mean of the
weighted loss + l2 * sum theta^2). With one replica and the same batch, one `fit` step equals one
tf.distribute step (tests/test_keras_trainer.py). Under JAX `keras.distribution.DataParallel` the step sees
one global batch: the member batch is drawn from the replica-0 seed over the whole unique batch,
then split over the devices, which each run the network on their share; BN statistics and the
loss mean stay global (no 1/R on L2), so the result equals the single-device step on that batch
(not the TF loop's R per-replica draws, which have the same distribution).

Only `trainer.network` is meant to be saved (`network.save("model.keras")`); the trainer has no
`get_config`: checkpoint it with `save_weights` (network, step counter) if needed. `evaluate` and
`validation_data` are not supported: evaluate `trainer.network.predict([x] * M)` with
`mixmo_tf.evaluation.metrics.evaluate_logits`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import keras
import numpy as np
from keras import ops

from mixmo_tf.core import optimizers, schedules, seeds
from mixmo_tf.core import step as step_lib
from mixmo_tf.data.batches import EpochBatches
from mixmo_tf.data.datasets import InMemory

_NOT_SUPPORTED_IN_COMPILE = ("loss", "loss_weights", "metrics", "weighted_metrics")


class MixMoTrainer(keras.Model):
  """Trains a MixMo network with `fit`: repetition, masks and the weighted loss in the train step.

  `fit` data: batches of unique raw examples `((images uint8 [U, H, W, 3], labels int [U]),)`,
  or `(((images, labels), (partner_images [M * B, ...], partner_labels [M * B])),)` with MSDA
  (B = b * U), passed as `x` only (y is None); `train_arrays_dataset` yields them. Called with
  `training=False` (`predict`), the trainer takes one normalised image batch and returns the
  network's member logits [N, M, K], like `network([x] * M)`.

  Args:
    network: a `MixMoModel` (e.g. `mixmo_tf.build_model(...)`), trained in place.
    spec: the step's `StepSpec` (`StepSpec.create(config, info, network.mask_shape)`), with one
      replica: the Keras step always sees the global batch.
    seed: run seed; the step's root seed is `core.seeds.step_root(seed)`, as in the
      tf.distribute engine.
    steps_per_epoch: steps per pass over the unique data (docs/method.md §6.6), mapping the step
      counter to the 1-based epoch of p(e).
    epochs: total epochs E of the p(e) schedule (§4).
    patch_probability: p0 of the p(e) schedule.
    l2: weight of the sum-of-squares penalty (§5); None takes `spec.l2`.
    name: Keras name.
  """

  def __init__(self, network, spec: step_lib.StepSpec, *, seed: int, steps_per_epoch: int,
               epochs: int, patch_probability: float = 0.5, l2: Optional[float] = None,
               name: str = "mixmo_trainer", **kwargs):
    super().__init__(name=name, **kwargs)
    _check_arguments(network, spec, seed, steps_per_epoch, epochs, patch_probability, l2)
    self.network = network
    self.spec = spec
    self.num_members = spec.num_members
    self.seed = int(seed)
    self.steps_per_epoch = int(steps_per_epoch)
    self.epochs = int(epochs)
    self.patch_probability = float(patch_probability)
    self.l2 = float(spec.l2 if l2 is None else l2)
    # The loss sees the whole member batch, whatever its size, as one replica with this L2.
    self._loss_spec = dataclasses.replace(spec, l2=self.l2)
    # The step counter is ours, not optimizer.iterations (as in the tf.distribute engine): seeds
    # and p(e) follow batches. int64 on TensorFlow, as that engine's step (stateless_fold_in draws
    # in the data's dtype); int32 elsewhere (JAX has no int64 by default).
    dtype = "int64" if keras.backend.backend() == "tensorflow" else "int32"
    self.step_counter = self.add_weight(shape=(), dtype=dtype, initializer="zeros",
                                        trainable=False, name="step")
    self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
    # The network is built and `call` needs no shapes: Keras must not build the trainer by
    # calling it symbolically (that would run the inference branch on a training batch).
    self.built = True

  def compile(self, optimizer, **kwargs):
    """`keras.Model.compile` without a loss or metrics: the trainer brings its own (§5).

    On TensorFlow the step runs without XLA ("auto" resolves to False): TF's stateless gamma
    sampler behind kappa (§3.2) has no XLA kernel, as in the tf.distribute engine, whose member batch
    also stays outside XLA. JAX compiles the whole step.
    """
    for key in _NOT_SUPPORTED_IN_COMPILE:
      if kwargs.get(key) is not None:
        raise ValueError(f"MixMoTrainer.compile computes the MixMo loss and member accuracy "
                         f"itself; got {key}={kwargs[key]!r}. Pass only the optimizer (and "
                         f"e.g. jit_compile, steps_per_execution).")
    if keras.backend.backend() == "tensorflow":
      if kwargs.get("jit_compile", "auto") is True:
        raise ValueError("jit_compile=True is not supported on the TensorFlow backend: "
                         "tf.random.stateless_gamma (kappa, docs/method.md §3.2) has no XLA "
                         "kernel. Leave jit_compile at 'auto' or False.")
      kwargs["jit_compile"] = False
    super().compile(optimizer=optimizer, **kwargs)

  def fit(self, x=None, y=None, *args, **kwargs):
    """`keras.Model.fit` on batches of unique raw examples passed as x (see the class doc);
    `TrainBatches` are fed in their own order (shuffle=False)."""
    if y is not None:
      raise ValueError(f"MixMoTrainer.fit takes the labels inside x = (images, labels), y None; "
                       f"got y of type {type(y).__name__}. Use train_arrays_dataset(...).")
    if isinstance(x, TrainBatches) and x.batches.num_batches != self.steps_per_epoch:
      raise ValueError(f"The data has {x.batches.num_batches} batches per epoch but the trainer "
                       f"counts steps_per_epoch={self.steps_per_epoch} (which maps steps to the "
                       f"epoch of p(e), docs/method.md §4); make them equal.")
    if isinstance(x, TrainBatches):
      # TrainBatches orders each epoch itself, keyed by (seed, epoch); Keras' own batch shuffle
      # draws from Python's global `random`, which a resumed run would not replay.
      kwargs["shuffle"] = False
    return super().fit(x, y, *args, **kwargs)

  def call(self, data, training=False):
    """Training: one MixMo step's forward pass -> (logits, targets, kappa); else member logits."""
    if not training:
      if isinstance(data, (list, tuple, dict)):
        raise ValueError(
            f"MixMoTrainer at inference takes one normalised image batch, got a "
            f"{type(data).__name__} of {len(data)}: evaluate/validation_data are not supported; "
            f"use trainer.network.predict([x] * {self.num_members}) and "
            f"mixmo_tf.evaluation.metrics.evaluate_logits.")
      return self.network([data] * self.num_members, training=False)
    (images, labels), partners = self._unpack(data)
    step = ops.convert_to_tensor(self.step_counter)
    seed, batch_seed = step_lib.step_seeds(seeds.step_root(self.seed), step, 0)
    epoch = ops.floor_divide(step, self.steps_per_epoch) + 1
    patch_p = schedules.patch_probability(epoch, self.epochs, self.patch_probability)
    batch = step_lib.member_batch(self.spec, images, labels, partners, seed, batch_seed, patch_p)
    inputs, masks, targets, kappa = shard_batch(batch.inputs, batch.masks, batch.targets,
                                                 batch.kappa)
    logits = self.network(inputs + [masks], training=True)
    self.step_counter.assign(step + 1)
    return logits, targets, kappa

  def _unpack(self, data):
    """((images, labels), partners) of a training batch; partners () without MSDA."""
    msda = self.spec.msda != "none"
    expected = ("((images, labels), (partner_images, partner_labels))" if msda
                else "(images, labels)")
    pair = lambda v: isinstance(v, (list, tuple)) and len(v) == 2
    if not pair(data) or (msda and not (pair(data[0]) and pair(data[1]))):
      got = (f"a {type(data).__name__} of {len(data)}" if isinstance(data, (list, tuple))
             else type(data).__name__)
      raise ValueError(f"MixMoTrainer with msda={self.spec.msda!r} trains on x = {expected} "
                       f"(y None), got {got}. Use train_arrays_dataset(...).")
    if msda:
      return tuple(data[0]), tuple(data[1])
    return tuple(data), ()

  def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
    """`core.step.replica_loss` on the global batch: the mean of sum_i w_r(kappa)_i CE_i, plus
    l2 * sum theta^2 (§5)."""
    del x, y, sample_weight, training
    logits, targets, kappa = y_pred
    loss = step_lib.replica_loss(self._loss_spec, logits, targets, kappa,
                                 self.network.trainable_variables,
                                 ops.cast(ops.shape(logits)[0], "float32"))
    for extra in self.losses:  # add_loss terms of custom layers, if any (none in MixMo nets).
      loss = loss + ops.cast(ops.sum(extra), loss.dtype)
    return loss

  def compute_metrics(self, x, y, y_pred, sample_weight=None):
    """Loss and member accuracy (share of member predictions equal to their argmax target)."""
    del x, y, sample_weight
    logits, targets, _ = y_pred
    self.accuracy_tracker.update_state(step_lib.correct_members(logits, targets)
                                       / self.num_members)
    return self.get_metrics_result()

  @property
  def global_step(self) -> int:
    """Steps trained so far (the counter that keys seeds and p(e))."""
    return int(ops.convert_to_numpy(self.step_counter))


def shard_batch(inputs, masks, targets, kappa):
  """The member batch split along its batch axis under a `keras.distribution` (else unchanged).

  Repetition and pairing draw from the whole unique batch, so XLA's partitioner would otherwise
  run the network replicated on every device; constraining the B examples to the distribution's
  data layout makes each device run its share (BN statistics and the loss stay global).
  """
  distribution = keras.distribution.distribution()
  if distribution is None:
    return inputs, masks, targets, kappa
  shard = lambda t: keras.distribution.distribute_tensor(
      t, distribution.get_data_layout(tuple(t.shape)))
  return [shard(x) for x in inputs], shard(masks), shard(targets), shard(kappa)


def _check_arguments(network, spec, seed, steps_per_epoch, epochs, patch_probability, l2):
  """Raises ValueError naming the first argument that cannot work."""
  if not isinstance(spec, step_lib.StepSpec):
    raise ValueError(f"spec must be a mixmo_tf.core.step.StepSpec, got {type(spec).__name__}.")
  if spec.num_replicas != 1:
    raise ValueError(f"spec.num_replicas={spec.num_replicas}: the Keras step sees the global "
                     f"batch (docs/method.md §5); create the StepSpec with num_replicas=1.")
  if getattr(network, "num_members", None) != spec.num_members:
    raise ValueError(f"network has num_members={getattr(network, 'num_members', None)!r}, the "
                     f"spec {spec.num_members}.")
  if getattr(network, "is_folded", False):
    raise ValueError("network is a folded (inference-only) MixMo network; train the unfolded one.")
  if tuple(network.mask_shape) != tuple(spec.mask_shape):
    raise ValueError(f"spec.mask_shape={spec.mask_shape} differs from the network's stem grid "
                     f"{network.mask_shape} (docs/method.md §3.2).")
  seeds.check_seed(seed, "seed")
  for label, value in (("steps_per_epoch", steps_per_epoch), ("epochs", epochs)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{label} must be an int >= 1, got {value!r}.")
  if not 0.0 <= float(patch_probability) <= 1.0:
    raise ValueError(f"patch_probability must be in [0, 1], got {patch_probability!r}.")
  if l2 is not None and not (float(l2) >= 0.0 and math.isfinite(float(l2))):
    raise ValueError(f"l2 must be a finite float >= 0, got {l2!r}.")


class TrainBatches(keras.utils.PyDataset):
  """Batches of unique raw examples for `MixMoTrainer.fit`, in the run's data order
  (`data.batches.EpochBatches`: a permutation keyed by (seed, epoch), docs/method.md §6.1).

  Item i is `((images, labels),)`, so that Keras passes the pair as x with y None; with MSDA
  partners (§8), `(((images, labels), (partner_images, partner_labels)),)`. Covers batches
  `first_batch` .. `first_batch + num_batches - 1` of the 0-based `epoch` (default: the whole
  epoch); each further epoch of a multi-epoch `fit` covers the next epoch entirely.
  """

  def __init__(self, batches: EpochBatches, epoch: int = 0, first_batch: int = 0,
               num_batches: Optional[int] = None, **kwargs):
    super().__init__(**kwargs)
    self.batches = batches
    self._next = (int(epoch), int(first_batch))
    self.epoch, self.first_batch = self._next
    total = batches.num_batches - self.first_batch
    self._count = total if num_batches is None else int(num_batches)
    if not 0 <= self.first_batch < batches.num_batches or not 1 <= self._count <= total:
      raise ValueError(f"Batches {self.first_batch}..{self.first_batch + self._count - 1} "
                       f"are not within an epoch of {batches.num_batches} batches.")

  def __len__(self) -> int:
    return self._count

  def on_epoch_begin(self):
    self.epoch, self.first_batch = self._next
    self._next = (self.epoch + 1, 0)

  def __getitem__(self, index: int):
    if not 0 <= index < len(self):
      raise IndexError(f"batch index {index} out of range [0, {len(self)}).")
    pair, partners = self.batches.batch(self.epoch, self.first_batch + index)
    return ((pair, partners),) if partners else (pair,)


def train_arrays_dataset(images, labels, unique_batch_size: int, seed: int, epoch: int = 0,
                         partner_batch_size: int = 0, **kwargs) -> TrainBatches:
  """`fit`-ready batches of unique raw examples from in-memory arrays (see `TrainBatches`)."""
  batches = EpochBatches(InMemory(images, labels), unique_batch_size, seed, partner_batch_size)
  return TrainBatches(batches, epoch, **kwargs)


def trainer_from_config(config, info, network=None, **compile_kwargs) -> MixMoTrainer:
  """A compiled `MixMoTrainer` set up as the tf.distribute engine sets up a run (docs/method.md
  §6-§7).

  The network (`build_from_config` unless given), one-replica `StepSpec`, steps per epoch
  N // (B / b), and `make_optimizer(config.optimizer, schedules.schedule_from_config(...))`, the
  schedule fed with the optimizer's iterations (the tf.distribute engine feeds its own step
  counter: the same while no step is skipped). Under mixed_float16, Keras' compile adds the loss
  scaling.
  """
  from mixmo_tf.models import adapt_info, build_from_config
  network = network if network is not None else build_from_config(config, info)
  info = adapt_info(network, info)  # The normalisation the network expects (a wrapped backbone).
  spec = step_lib.StepSpec.create(config, info, network.mask_shape, num_replicas=1)
  schedule = schedules.schedule_from_config(config, info.num_train)
  trainer = MixMoTrainer(network, spec, seed=config.seed, steps_per_epoch=schedule.steps_per_epoch,
                         epochs=config.epochs, patch_probability=config.patch_probability,
                         l2=config.l2)
  trainer.compile(optimizer=optimizers.make_optimizer(config.optimizer, schedule),
                  **compile_kwargs)
  trainer.learning_rate_schedule = schedule  # For logs: step -> learning rate.
  trainer.info = info  # The DataInfo its step normalises with.
  return trainer
