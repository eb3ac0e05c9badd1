"""`MixMoTrainer` (`mixmo_tf.training.trainer`), the Keras engine's step: equal to the tf.distribute
engine's step on TensorFlow, `fit` with standard callbacks, its data and argument checks
(docs/method.md §3, §5, §6). Its JAX side (fit, data parallel, the same steps as TensorFlow's on
one batch) runs in tests/test_no_tensorflow.py's session, which imports the helpers below.
"""

import numpy as np

TOLERANCE = 1e-5  # Weights after the same step(s).
UNIQUE, REPS, CLASSES, SIZE, SEED = 8, 2, 10, 8, 11
CROSS_BACKEND_TOLERANCE = 1e-4  # JAX vs TensorFlow: other kernels, other summation orders.


def tiny_network(init_seed=0):
  """WRN-10-1, M = 2, 8x8x3 inputs, 10 classes (seconds to build and train)."""
  import keras

  from mixmo_tf import build_model
  keras.utils.set_random_seed(init_seed)
  return build_model("wide_resnet", depth=10, width=1, num_members=2, num_classes=CLASSES,
                     image_shape=(SIZE, SIZE, 3))


def tiny_spec(network, l2=5e-3):
  from mixmo_tf.core import step as step_lib
  return step_lib.StepSpec(
      num_members=2, batch_repetitions=REPS, input_repetition_probability=0.0, mixing="cutmix",
      alpha=2.0, weight_root=3.0, msda="none", msda_alpha=1.0, msda_probability=0.5,
      global_batch_size=UNIQUE * REPS, l2=l2, num_replicas=1, num_classes=CLASSES,
      crop_padding=1, flip=True, mean=(0.45,) * 3, std=(0.25,) * 3,
      mask_shape=tuple(network.mask_shape))


def learnable_data(count, seed=0):
  """uint8 images whose class shows as a bright row (so a tiny net learns it in a few steps)."""
  gen = np.random.default_rng(seed)
  labels = (np.arange(count) % CLASSES).astype(np.int32)
  images = gen.integers(0, 96, (count, SIZE, SIZE, 3))
  for i, label in enumerate(labels):
    images[i, label % SIZE, :, label // SIZE] = 255
    images[i, :, label % SIZE, 2] = 40 * (label // SIZE) + 128
  return images.astype(np.uint8), labels


def given_batch_trainer(network):
  """A MixMoTrainer whose training forward takes a member batch sampled elsewhere, so that two
  backends step on the same inputs, masks, targets and kappa (their random streams differ)."""
  from mixmo_tf.core import optimizers
  from mixmo_tf.training import trainer as keras_trainer

  class GivenBatch(keras_trainer.MixMoTrainer):

    def call(self, data, training=False):
      if not training:
        return super().call(data, training)
      *inputs, masks, targets, kappa = data
      return self.network(list(inputs) + [masks], training=True), targets, kappa

  trainer = GivenBatch(network, tiny_spec(network), seed=SEED, steps_per_epoch=1, epochs=1)
  trainer.compile(optimizer=optimizers.make_optimizer("pytorch", 0.1))
  return trainer


def given_batch_steps(network, arrays, steps=2):
  """`steps` SGD steps (momentum from the second) on one given batch; the weights after them."""
  trainer = given_batch_trainer(network)
  for _ in range(steps):
    trainer.train_on_batch(list(arrays))
  return [np.asarray(w.numpy() if hasattr(w, "numpy") else w.value, np.float64)
          for w in network.weights]


def write_given_batch_steps(model_path, batch_path, out_path):
  """`given_batch_steps` from a saved model and batch (another backend's process), to a file."""
  import keras
  with np.load(batch_path) as saved:
    arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
  network = keras.models.load_model(model_path, safe_mode=True)
  np.savez(out_path, *given_batch_steps(network, arrays))


def max_weight_difference(a, b):
  """Largest |a - b| over every weight (BN moving statistics included), matched in order."""
  assert len(a.weights) == len(b.weights)
  return max(float(np.max(np.abs(np.asarray(x.numpy(), np.float64) -
                                 np.asarray(y.numpy(), np.float64))))
             for x, y in zip(a.weights, b.weights))


# ------------------------------------------------------------------------------------------------
# TensorFlow, in process.


def test_keras_step_equals_the_tf_distribute_step_on_tensorflow():
  """Two `train_on_batch` steps (epoch 1 with Cut-MixMo, epoch 2 with p(e) = 0) equal two steps
  of the tf.distribute engine's functions on the same batches and seeds, BN statistics included."""
  import keras
  import tensorflow as tf

  from mixmo_tf.core import optimizers, schedules, seeds
  from mixmo_tf.core import step as step_lib
  from mixmo_tf.training import trainer as keras_trainer
  from mixmo_tf.training.tf_engine import apply_step
  assert keras.backend.backend() == "tensorflow"
  net_keras, net_loop = tiny_network(), tiny_network(1)
  initial = net_keras.get_weights()
  net_loop.set_weights(initial)
  spec = tiny_spec(net_keras)
  schedule = schedules.WarmupPiecewiseSchedule(0.1, 1, warmup_steps=3)
  trainer = keras_trainer.MixMoTrainer(net_keras, spec, seed=SEED, steps_per_epoch=1, epochs=2,
                                       patch_probability=0.5)
  trainer.compile(optimizer=optimizers.make_optimizer("pytorch", schedule))
  optimizer = optimizers.make_optimizer("pytorch", schedule)
  optimizer.build(net_loop.trainable_variables)
  root = tf.constant(seeds.step_root(SEED))  # The tf.distribute engine's root seed.
  batches = [learnable_data(UNIQUE, seed=s) for s in (1, 2)]
  loop_losses = []
  for step, (images, labels) in enumerate(batches):
    trainer.train_on_batch((images, labels))
    # The tf.distribute engine's replica step on replica 0 (int64 step, 1-based epoch).
    seed, batch_seed = step_lib.step_seeds(root, tf.constant(step, tf.int64), 0)
    patch_p = schedules.patch_probability(step // 1 + 1, 2, 0.5)
    batch = step_lib.member_batch(spec, tf.constant(images), tf.constant(labels), (), seed,
                                  batch_seed, patch_p)
    loss, _ = apply_step(net_loop, optimizer, spec, batch.inputs, batch.targets, batch.masks,
                         batch.kappa)
    loop_losses.append(float(loss))
  assert trainer.global_step == 2 and int(optimizer.iterations.numpy()) == 2
  moved = max(float(np.max(np.abs(w - v))) for w, v in zip(net_loop.get_weights(), initial))
  assert moved > 1e-3  # The steps did train.
  difference = max_weight_difference(net_keras, net_loop)
  print(f"TF Keras engine vs tf.distribute engine, 2 steps: max |weight difference| "
        f"{difference:.3g}")
  assert difference <= TOLERANCE, difference
  assert all(np.isfinite(loop_losses))


def test_fit_with_standard_callbacks_learns_and_predicts(tmp_path):
  import keras

  from mixmo_tf.core import optimizers
  from mixmo_tf.training import trainer as keras_trainer
  network = tiny_network()
  trainer = keras_trainer.MixMoTrainer(network, tiny_spec(network, l2=3e-4), seed=SEED,
                                       steps_per_epoch=12, epochs=2)
  trainer.compile(optimizer=optimizers.make_optimizer("pytorch", 0.05))
  images, labels = learnable_data(12 * UNIQUE)
  batches = keras_trainer.train_arrays_dataset(images, labels, UNIQUE, seed=SEED)
  history = keras.callbacks.History()
  trainer.fit(batches, epochs=2, verbose=0,
              callbacks=[keras.callbacks.TensorBoard(log_dir=str(tmp_path / "tb")), history])
  losses = history.history["loss"]
  assert len(losses) == 2 and losses[1] < losses[0], history.history
  assert 0.0 <= history.history["accuracy"][-1] <= 1.0
  assert trainer.global_step == 24 and batches.epoch == 1
  assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
  x = ((images[:20] / 255.0 - 0.45) / 0.25).astype(np.float32)
  logits = trainer.network.predict([x, x], verbose=0)
  assert logits.shape == (20, 2, CLASSES)
  np.testing.assert_allclose(trainer.predict(x, verbose=0), logits, atol=1e-5)


def test_train_batches_order_and_bad_arguments():
  import pytest

  from mixmo_tf.training import trainer as keras_trainer
  images, labels = learnable_data(20)
  batches = keras_trainer.train_arrays_dataset(images, labels, 6, seed=3, partner_batch_size=8)
  assert len(batches) == 3
  batches.on_epoch_begin()
  assert batches.epoch == 0
  seen = [batches[i][0] for i in range(3)]
  (first, _), (partner_images, partner_labels) = seen[0]
  assert first.shape == (6, SIZE, SIZE, 3) and partner_images.shape[0] == len(partner_labels) == 8
  picked = np.concatenate([pair[0][1] for pair in seen])
  assert len(picked) == 18  # 18 distinct examples; the incomplete last batch is dropped.
  batches.on_epoch_end()
  batches.on_epoch_begin()
  assert batches.epoch == 1 and not np.array_equal(batches[0][0][0][1], seen[0][0][1])
  network = tiny_network()
  spec = tiny_spec(network)
  with pytest.raises(ValueError, match="num_replicas=2"):
    keras_trainer.MixMoTrainer(network, spec.__class__(**dict(vars(spec), num_replicas=2)),
                               seed=1, steps_per_epoch=1, epochs=1)
  with pytest.raises(ValueError, match="steps_per_epoch must be an int >= 1, got 0"):
    keras_trainer.MixMoTrainer(network, spec, seed=1, steps_per_epoch=0, epochs=1)
  trainer = keras_trainer.MixMoTrainer(network, spec, seed=1, steps_per_epoch=1, epochs=1)
  with pytest.raises(ValueError, match="loss='mse'"):
    trainer.compile(optimizer="sgd", loss="mse")
  with pytest.raises(ValueError, match="jit_compile=True"):
    trainer.compile(optimizer="sgd", jit_compile=True)
  with pytest.raises(ValueError, match="one normalised image batch, got a tuple of 2"):
    trainer((images, labels))  # evaluate / validation_data would pass (images, labels).
