"""Models across Keras backends: a `model.keras` saved under TensorFlow loads under JAX with the
same member logits (within 1e-4), and the reverse, folded stems too; under JAX, FusedBatchNorm's
`keras.ops` path updates its moving statistics as the fused kernel does (docs/method.md §2.1 /
§12.9).

Keras fixes the backend once per process: `stage_tf_save` (build, perturb, save, logits) and
`stage_tf_load` run here, on TensorFlow; `stage_jax` (load, compare, train-mode forward, save) runs
in the JAX session of tests/conftest.py (`jax_session`), where TensorFlow is unimportable.
"""

import json

import numpy as np
import pytest

TOLERANCE = 1e-4  # Member logits across backends (the bound).
# name -> (build_model kwargs, batch size). PreActResNet-18 (11M parameters) at 16x16 inputs.
SPECS = {
    "wide_resnet": (dict(depth=10, width=1, num_members=2, num_classes=5, image_shape=(8, 8, 3)),
                    5),
    "preact_resnet18": (dict(width=1, num_members=2, num_classes=5, image_shape=(16, 16, 3)), 5),
}


def perturb(model, rng):
  """Non-trivial BN statistics, scales, offsets and head biases (as test_models.py does)."""
  for w in model.weights:
    noise = 0.1 * rng.normal(size=w.shape).astype(np.float32)
    if "moving_variance" in w.path:
      w.assign(1.0 + np.abs(noise))
    elif "kernel" not in w.path:
      w.assign(w.numpy() + noise)


def _member_logits(model, folded, x):
  members = model.num_members
  return (np.asarray(model.predict([x] * members, verbose=0)),
          np.asarray(folded.predict(x, verbose=0)))


def stage_tf_save(out):
  import keras
  from mixmo_tf.models import build_model
  assert keras.backend.backend() == "tensorflow", keras.backend.backend()
  for name, (kwargs, batch) in SPECS.items():
    keras.utils.set_random_seed(0)
    model = build_model(name, **kwargs)
    rng = np.random.default_rng(4)
    perturb(model, rng)
    folded = model.folded()
    x = rng.normal(size=(batch,) + tuple(kwargs["image_shape"])).astype(np.float32)
    plain_logits, folded_logits = _member_logits(model, folded, x)
    model.save(out / f"{name}_tf.keras")
    folded.save(out / f"{name}_tf_folded.keras")
    np.savez(out / f"{name}_tf.npz", x=x, plain=plain_logits, folded=folded_logits)


def _jax_training_forward(model, inputs):
  """One training-mode forward as JAX's `fit` runs it (jitted `stateless_call`, then the updated
  non-trainable variables written back); returns the outputs. One compile, not one per op."""
  import functools
  import jax
  trainable = [v.value for v in model.trainable_variables]
  non_trainable = [v.value for v in model.non_trainable_variables]
  step = jax.jit(functools.partial(model.stateless_call, training=True))
  outputs, non_trainable = step(trainable, non_trainable, inputs)
  for variable, value in zip(model.non_trainable_variables, non_trainable):
    variable.assign(value)
  return outputs


def _batch_norm_errors(model, batch_norm_cls, inputs, before):
  """Largest deviations of a training-mode forward from the NumPy equations, per quantity.

  `before`: {layer name: (moving_mean, moving_variance)} ahead of the forward that `model` already
  ran. Training-mode outputs do not depend on the moving statistics, so a probe run afterwards sees
  the same BN inputs as that forward did.
  """
  import keras
  layers = [l for l in model.layers if isinstance(l, batch_norm_cls)]
  after = {l.name: (l.moving_mean.numpy(), l.moving_variance.numpy()) for l in layers}
  probe = keras.Model(model.inputs, [t for l in layers for t in (l.input, l.output)])
  values = [np.asarray(v, np.float64) for v in _jax_training_forward(probe, inputs)]
  errors = dict(moving_mean=0.0, moving_variance=0.0, outputs=0.0)
  for layer, bn_in, bn_out in zip(layers, values[0::2], values[1::2]):
    mean, variance = bn_in.mean((0, 1, 2)), bn_in.var((0, 1, 2))
    n = bn_in.size // bn_in.shape[-1]
    momentum = layer.momentum
    old_mean, old_variance = before[layer.name]
    new_mean, new_variance = after[layer.name]
    expected_mean = momentum * old_mean + (1 - momentum) * mean
    expected_variance = momentum * old_variance + (1 - momentum) * variance * n / (n - 1)
    expected_out = ((bn_in - mean) / np.sqrt(variance + layer.epsilon) * layer.gamma.numpy()
                    + layer.beta.numpy())
    for key, got, want in [("moving_mean", new_mean, expected_mean),
                           ("moving_variance", new_variance, expected_variance),
                           ("outputs", bn_out, expected_out)]:
      errors[key] = max(errors[key], float(np.max(np.abs(got - want) / (1.0 + np.abs(want)))))
  errors["layers"] = len(layers)
  errors["moving_mean_changed"] = float(max(np.max(np.abs(after[k][0] - before[k][0]))
                                            for k in after))
  return errors


def stage_jax(out):
  """Under JAX: loads TensorFlow's files, compares, trains one forward, saves back."""
  import keras

  from mixmo_tf.models.layers import FusedBatchNorm
  assert keras.backend.backend() == "jax", keras.backend.backend()
  report = {}
  for name, (kwargs, batch) in SPECS.items():
    saved = np.load(out / f"{name}_tf.npz")
    x = saved["x"]
    model = keras.models.load_model(out / f"{name}_tf.keras", safe_mode=True)
    folded = keras.models.load_model(out / f"{name}_tf_folded.keras", safe_mode=True)
    plain_logits, folded_logits = _member_logits(model, folded, x)
    np.savez(out / f"{name}_jax_from_tf.npz", plain=plain_logits, folded=folded_logits)
    # One training-mode forward through the masks input (binary, complementary: cutmix-like).
    rng = np.random.default_rng(5)
    images = [rng.normal(size=x.shape).astype(np.float32) for _ in range(model.num_members)]
    patch = (rng.random((batch, 1) + tuple(model.mask_shape) + (1,)) < 0.5).astype(np.float32)
    inputs = images + [np.concatenate([patch, 1.0 - patch], axis=1)]
    layers = [l for l in model.layers if isinstance(l, FusedBatchNorm)]
    before = {l.name: (l.moving_mean.numpy(), l.moving_variance.numpy()) for l in layers}
    _jax_training_forward(model, inputs)
    report[name] = _batch_norm_errors(model, FusedBatchNorm, inputs, before)
    # The updated model, and its folded form made under JAX, back to TensorFlow.
    folded = model.folded()
    plain_logits, folded_logits = _member_logits(model, folded, x)
    model.save(out / f"{name}_jax.keras")
    folded.save(out / f"{name}_jax_folded.keras")
    np.savez(out / f"{name}_jax.npz", plain=plain_logits, folded=folded_logits)
  (out / "jax_report.json").write_text(json.dumps(report, indent=1))


def stage_tf_load(out):
  import keras
  import mixmo_tf.models  # noqa: F401  (registers the serializable classes)
  assert keras.backend.backend() == "tensorflow", keras.backend.backend()
  for name in SPECS:
    x = np.load(out / f"{name}_tf.npz")["x"]
    model = keras.models.load_model(out / f"{name}_jax.keras", safe_mode=True)
    folded = keras.models.load_model(out / f"{name}_jax_folded.keras", safe_mode=True)
    plain_logits, folded_logits = _member_logits(model, folded, x)
    np.savez(out / f"{name}_tf_from_jax.npz", plain=plain_logits, folded=folded_logits)


# ------------------------------------------------------------------------------------------------
# Pytest side.


@pytest.fixture(scope="module")
def round_trip(jax_session):
  """The files of the three stages (TensorFlow, JAX, TensorFlow) and the JAX stage's report."""
  out = jax_session.data / "model_backends"
  stage_tf_load(out)
  return out, json.loads((out / "jax_report.json").read_text())


def _max_differences(out, name, got, want):
  a, b = np.load(out / f"{name}_{got}.npz"), np.load(out / f"{name}_{want}.npz")
  diffs = {}
  for key in ("plain", "folded"):
    assert a[key].shape == b[key].shape == (SPECS[name][1], 2, 5), (key, a[key].shape)
    diffs[key] = float(np.max(np.abs(a[key] - b[key])))
  print(f"\n{name} {want} -> {got}: max |logit difference| {diffs}")
  return diffs


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPECS))
def test_tensorflow_saved_model_gives_the_same_member_logits_under_jax(round_trip, name):
  out, _ = round_trip
  diffs = _max_differences(out, name, "jax_from_tf", "tf")
  assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPECS))
def test_jax_saved_model_gives_the_same_member_logits_under_tensorflow(round_trip, name):
  out, _ = round_trip
  diffs = _max_differences(out, name, "tf_from_jax", "jax")
  assert max(diffs.values()) <= TOLERANCE, diffs
  jax = np.load(out / f"{name}_jax.npz")  # The folded model made under JAX sums the stems too.
  np.testing.assert_allclose(jax["folded"], jax["plain"], atol=TOLERANCE, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPECS))
def test_jax_batch_norm_training_forward_matches_the_numpy_equations(round_trip, name):
  """Batch statistics normalise; moving stats: momentum 0.9 and the unbiased variance (§12.9)."""
  errors = round_trip[1][name]
  assert errors["layers"] > 0 and errors["moving_mean_changed"] > 1e-3, errors
  assert errors["moving_mean"] < 1e-5 and errors["moving_variance"] < 1e-5, errors
  assert errors["outputs"] < 1e-4, errors


def test_portable_batch_norm_path_matches_the_fused_kernel():
  """In-process, on TensorFlow: the `keras.ops` path that the other backends take gives the fused
  kernel's outputs, input gradients and moving statistics for the same weights."""
  keras = pytest.importorskip("keras")
  if keras.backend.backend() != "tensorflow":
    pytest.skip(f"needs the TensorFlow backend for the fused kernel, not {keras.backend.backend()}")
  import tensorflow as tf
  from mixmo_tf.models.layers import FusedBatchNorm
  rng = np.random.default_rng(6)
  x = tf.constant(rng.normal(1.0, 2.0, (6, 3, 3, 4)), tf.float32)
  weights = tf.constant(rng.normal(size=(6, 3, 3, 4)), tf.float32)
  layers = [FusedBatchNorm(synchronized=False) for _ in range(2)]
  results = []
  for layer, portable in zip(layers, (False, True)):
    layer.build(x.shape)
    layer.gamma.assign(np.linspace(0.5, 2.0, 4).astype(np.float32))
    layer.beta.assign(np.linspace(-1.0, 1.0, 4).astype(np.float32))
    layer.moving_mean.assign(np.full(4, 0.3, np.float32))
    layer.moving_variance.assign(np.full(4, 2.0, np.float32))
    call = (lambda v, training, l=layer: l.portable_call(v, training)) if portable else layer
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = call(x, training=True)
      loss = tf.reduce_sum(out * weights)
    grads = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
    results.append([out, *grads, layer.moving_mean, layer.moving_variance,
                    call(x, training=False)])
  for fused, portable in zip(*results):
    np.testing.assert_allclose(np.asarray(portable), np.asarray(fused), rtol=1e-5, atol=1e-5)
  half = FusedBatchNorm(dtype="mixed_float16")
  half.build(x.shape)
  assert half.portable_call(tf.cast(x, tf.float16), True).dtype == tf.float16
