"""Multi-input WRN / PreActResNet: parameter counts, inference path, saving, gradients, training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mixmo_tf import build_model, mixmo_loss, sample_masks
from mixmo_tf.models import layers as common
from mixmo_tf.models.layers import (BN_EPSILON, BN_MOMENTUM, FusedBatchNorm,
                                     set_batch_norm_sync)


def trainable_count(model):
  return int(sum(np.prod(v.shape) for v in model.trainable_weights))


# Official implementation's counts (docs/method.md §2.3 and issue 2), CIFAR-100 heads.
@pytest.mark.parametrize("width,vanilla,mixmo", [(10, 36_536_884, 36_601_416),
                                                 (1, 375_348, 382_280),
                                                 (2, 1_479_220, 1_492_552),
                                                 (4, 5_872_180, 5_898_312)])
def test_wrn28_parameter_counts(width, vanilla, mixmo):
  assert trainable_count(build_model("wide_resnet", depth=28, width=width, num_members=1,
                                     num_classes=100)) == vanilla
  assert trainable_count(build_model("wide_resnet", depth=28, width=width, num_members=2,
                                     num_classes=100)) == mixmo


def test_wrn_m3_and_cifar10_counts():
  assert trainable_count(build_model("wide_resnet", depth=28, width=10, num_members=3,
                                     num_classes=100)) == 36_665_948
  assert trainable_count(build_model("wide_resnet", depth=28, width=10, num_members=2,
                                     num_classes=10)) == 36_486_036


def test_preact_resnet18_parameter_counts():
  assert trainable_count(build_model("preact_resnet18", width=1, num_members=1)) == 11_268_616
  assert trainable_count(build_model("preact_resnet18", width=1, num_members=2)) == 11_372_944


def test_architecture_details():
  model = build_model("wide_resnet", depth=10, width=2, num_members=2, num_classes=10)
  bns = [l for l in model.layers if isinstance(l, FusedBatchNorm)]
  assert bns and all(l.momentum == BN_MOMENTUM and l.epsilon == BN_EPSILON for l in bns)
  convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
  assert all(not l.use_bias for l in convs)
  # Stride on the second conv of the first block of groups 2-3; shortcut on the raw input.
  assert model.get_layer("group2_block1_conv1").strides == (1, 1)
  assert model.get_layer("group2_block1_conv2").strides == (2, 2)
  assert model.get_layer("group2_block1_shortcut").input is model.get_layer(
      "group1_block1_add").output
  assert model.mask_shape == (32, 32)
  preact = build_model("preact_resnet18", width=1, num_members=2, image_shape=(64, 64, 3))
  assert preact.mask_shape == (32, 32)
  assert preact.get_layer("stem_0").filters == 64


def test_head_initialisation_std():
  model = build_model("wide_resnet", depth=10, width=4, num_members=2, num_classes=100)
  kernel = model.get_layer("heads").kernel.numpy()
  np.testing.assert_allclose(kernel.std(), np.sqrt(2 / 256), rtol=0.05)
  preact = build_model("preact_resnet18", width=1, num_members=2, num_classes=200)
  np.testing.assert_allclose(preact.get_layer("heads").kernel.numpy().std(), 0.01, rtol=0.05)


def _tiny(name="wide_resnet", members=2, **kw):
  if name == "wide_resnet":
    return build_model(name, depth=10, width=1, num_members=members, num_classes=5,
                       image_shape=(8, 8, 3), **kw)
  return build_model(name, width=1, num_members=members, num_classes=5, image_shape=(16, 16, 3))


@pytest.mark.parametrize("name", ["wide_resnet", "preact_resnet18"])
def test_inference_sums_stems_and_equals_mimo_masks(name):
  model = _tiny(name)
  x = np.random.default_rng(0).normal(size=(4,) + model.input_shape[0][1:]).astype(np.float32)
  out = model.predict([x, x], verbose=0)
  assert out.shape == (4, 2, 5)
  # Constant masks 1/M in the training form equal the inference sum (Sec. 3.1); BN in inference.
  half = np.full((4, 2) + model.mask_shape + (1,), 0.5, np.float32)
  np.testing.assert_allclose(model([x, x, half], training=False), out, rtol=1e-5, atol=1e-5)
  # Explicit recomputation: the mixing layer's input is the sum of the two stems' outputs.
  probe = keras.Model(model.inputs, model.get_layer("mixing").output)
  stems = [keras.Model(model.inputs[i], model.get_layer(f"stem_{i}").output) for i in range(2)]
  np.testing.assert_allclose(probe([x, x, None]), stems[0](x) + stems[1](x), rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_stem_and_head():
  model = _tiny(members=3)
  x = [tf.random.normal((4, 8, 8, 3), seed=i) for i in range(3)]
  masks, kappa = sample_masks(4, 8, 8, 3, "cutmix", patch_probability=1.0, seed=0)
  targets = tf.one_hot(tf.constant([[0, 1, 2]] * 4), 5)
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(mixmo_loss(targets, model(x + [masks], training=True), kappa, 3.0))
  grads = dict(zip([v.path for v in model.trainable_variables],
                   tape.gradient(loss, model.trainable_variables)))
  for i in range(3):
    g = grads[f"stem_{i}/kernel"]
    assert g is not None and float(tf.reduce_sum(tf.abs(g))) > 0
  assert all(g is not None for g in grads.values())


@pytest.mark.parametrize("name", ["wide_resnet", "preact_resnet18"])
def test_keras_save_load_round_trip(tmp_path, name):
  model = _tiny(name)
  x = np.random.default_rng(1).normal(size=(3,) + model.input_shape[0][1:]).astype(np.float32)
  path = tmp_path / "model.keras"
  model.save(path)
  loaded = keras.models.load_model(path, safe_mode=True)
  assert type(loaded) is type(model) and loaded.num_members == 2
  np.testing.assert_allclose(loaded.predict([x, x], verbose=0), model.predict([x, x], verbose=0),
                             rtol=1e-6, atol=1e-6)


def test_invalid_arguments():
  with pytest.raises(ValueError, match="depth=12"):
    build_model("wide_resnet", depth=12)
  with pytest.raises(ValueError, match="num_members=0"):
    build_model("wide_resnet", depth=10, num_members=0)
  with pytest.raises(ValueError, match="'resnet50'"):
    build_model("resnet50")


def test_tiny_mixmo_learns_with_cutmix_masks():
  """A few dozen steps with cutmix masks and w_r weights lower both heads' losses."""
  keras.utils.set_random_seed(0)
  rng = np.random.default_rng(0)
  # A learnable synthetic problem: class = brightest of 4 quadrant-coloured prototypes.
  protos = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
  labels = rng.integers(0, 4, 256)
  images = protos[labels] + 0.3 * rng.normal(size=(256, 8, 8, 3)).astype(np.float32)
  model = build_model("wide_resnet", depth=10, width=1, num_members=2, num_classes=4,
                      image_shape=(8, 8, 3))
  opt = keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True)

  @tf.function
  def step(x0, x1, y0, y1, seed):
    masks, kappa = sample_masks(32, 8, 8, 2, "cutmix", patch_probability=0.5, seed=seed)
    targets = tf.one_hot(tf.stack([y0, y1], 1), 4)
    with tf.GradientTape() as tape:
      logits = model([x0, x1, masks], training=True)
      per_head = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, logits), 0)
      loss = tf.reduce_mean(mixmo_loss(targets, logits, kappa, 3.0))
    opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                            model.trainable_variables))
    return per_head

  history = []
  for i in range(48):
    a, b = rng.integers(0, 256, 32), rng.integers(0, 256, 32)
    history.append(step(images[a], images[b], labels[a], labels[b], tf.constant([i, 0])).numpy())
  first, last = np.mean(history[:6], 0), np.mean(history[-6:], 0)
  assert np.all(last < 0.7 * first), (first, last)


@pytest.mark.parametrize("name,members", [("wide_resnet", 2), ("wide_resnet", 3),
                                          ("preact_resnet18", 2)])
def test_folded_stems_equal_the_m_stem_sum(name, members, tmp_path):
  model = _tiny(name, members=members)
  rng = np.random.default_rng(4)
  for w in model.weights:  # non-trivial BN statistics, scales, offsets and head biases
    noise = 0.1 * rng.normal(size=w.shape).astype(np.float32)
    if "moving_variance" in w.path:
      w.assign(1.0 + np.abs(noise))
    elif "kernel" not in w.path:
      w.assign(w.numpy() + noise)
  x = rng.normal(size=(5,) + model.input_shape[0][1:]).astype(np.float32)
  folded = model.folded()
  assert folded.num_inputs == 1 and len(folded.inputs) == 1
  assert trainable_count(folded) == trainable_count(model) - (members - 1) * int(
      np.prod(model.get_layer("stem_0").kernel.shape))
  np.testing.assert_allclose(folded([x]), model([x] * members), atol=1e-5, rtol=1e-5)
  folded.save(tmp_path / "folded.keras")
  loaded = keras.models.load_model(tmp_path / "folded.keras", safe_mode=True)
  np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict([x] * members, verbose=0),
                             atol=1e-5, rtol=1e-5)


def test_fused_batch_norm_matches_the_reference_equations():
  """Training: batch statistics, running stats updated with momentum 0.1 (PyTorch) and the
  unbiased variance; inference: the running statistics."""
  layer = FusedBatchNorm()
  x = np.random.default_rng(0).normal(2.0, 3.0, size=(8, 4, 4, 5)).astype(np.float32)
  layer.build(x.shape)
  layer.gamma.assign(np.arange(1, 6, dtype=np.float32))
  layer.beta.assign(np.full(5, 0.5, np.float32))
  out = layer(x, training=True).numpy()
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  expected = (x - mean) / np.sqrt(var + 1e-5) * np.arange(1, 6) + 0.5
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  n = 8 * 4 * 4
  np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(layer.moving_variance.numpy(), 0.9 + 0.1 * var * n / (n - 1),
                             rtol=1e-5)
  inference = layer(x, training=False).numpy()
  expected = ((x - layer.moving_mean.numpy()) / np.sqrt(layer.moving_variance.numpy() + 1e-5)
              * np.arange(1, 6) + 0.5)
  np.testing.assert_allclose(inference, expected, rtol=1e-4, atol=1e-4)


def _batch_norm_pair(x, **kwargs):
  """Two built FusedBatchNorms with equal, non-trivial weights, synchronized on and off."""
  layers = [FusedBatchNorm(synchronized=sync, **kwargs) for sync in (True, False)]
  for layer in layers:
    layer.build(x.shape)
    layer.gamma.assign(np.linspace(0.5, 2.0, x.shape[-1]).astype(np.float32))
    layer.beta.assign(np.linspace(-1.0, 1.0, x.shape[-1]).astype(np.float32))
    layer.moving_mean.assign(np.full(x.shape[-1], 0.3, np.float32))
    layer.moving_variance.assign(np.full(x.shape[-1], 2.0, np.float32))
  return layers


def test_synchronized_batch_norm_outside_a_strategy_is_the_fused_kernel_bit_for_bit():
  """No replicas: synchronized=True takes the fused path, so outputs, gradients and moving
  statistics are identical to synchronized=False (a refactor must change no number)."""
  x = tf.constant(np.random.default_rng(2).normal(1.0, 2.0, (6, 3, 3, 4)), tf.float32)
  results = []
  for layer in _batch_norm_pair(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = layer(x, training=True)
      loss = tf.reduce_sum(out * tf.range(4, dtype=tf.float32))
    grads = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
    results.append([out, *grads, layer.moving_mean, layer.moving_variance,
                    layer(x, training=False)])
  for a, b in zip(*results):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _FakeReplicaContext:
  """Stands in for `copies` replicas that all hold the same batch: all_reduce(SUM) multiplies."""

  def __init__(self, copies):
    self.copies = copies

  def all_reduce(self, reduce_op, values):
    assert reduce_op == tf.distribute.ReduceOp.SUM, reduce_op
    return [v * self.copies for v in values]


@pytest.mark.parametrize("copies", [1, 2])
def test_synchronized_batch_norm_branch_matches_the_fused_kernel(monkeypatch, copies):
  """The all-reduce branch (docs/method.md §12.11): with `copies` replicas each holding x, outputs
  and moving statistics equal the fused kernel on the concatenated batch; with one, gradients too.
  """
  rng = np.random.default_rng(3)
  x = tf.constant(rng.normal(1.0, 2.0, (6, 3, 3, 4)), tf.float32)
  weights = tf.constant(rng.normal(size=(6, 3, 3, 4)), tf.float32)  # Gradients far from 0.
  synced, fused = _batch_norm_pair(x)
  monkeypatch.setattr(common, "replica_context_in_sync", lambda: _FakeReplicaContext(copies))
  results = []
  for layer, inputs in [(synced, x), (fused, tf.concat([x] * copies, 0))]:
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      out = layer(inputs, training=True)[:6]
      loss = tf.reduce_sum(out * weights)
    grads = tape.gradient(loss, [inputs, layer.gamma.value, layer.beta.value])
    results.append([out, layer.moving_mean, layer.moving_variance]
                   + (grads if copies == 1 else []))
  for a, b in zip(*results):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  mixed = FusedBatchNorm(dtype="mixed_float16")
  assert mixed(x, training=True).dtype == tf.float16  # Cast back to the compute dtype.


def test_fused_batch_norm_config_round_trip_and_sync_switch():
  layer = FusedBatchNorm(synchronized=False, name="bn")
  config = layer.get_config()
  assert config["synchronized"] is False
  assert FusedBatchNorm.from_config(config).synchronized is False
  del config["synchronized"]  # A config saved before the argument existed.
  assert FusedBatchNorm.from_config(config).synchronized is True
  model = _tiny()
  bns = [l for l in model.layers if isinstance(l, FusedBatchNorm)]
  assert bns and all(l.synchronized for l in bns)
  assert set_batch_norm_sync(model, False) == len(bns)
  assert not any(l.synchronized for l in bns)
