"""MixMo for any Keras network (`mixmo_tf.models.from_backbone`, docs/method.md §2.5).

The wrapper is the real thing: wrapping the plain WRN-28-1 and PreActResNet-18-1 gives the
hand-built networks' parameter counts and, with their weights copied, their outputs for a given
mask. Every keras.applications family the issue names and a tiny KerasHub ResNet wrap, with the
stems' grid, folding, the step-0 features and the `.keras` round trip checked; a split crossed by
a skip connection is refused; the driver trains wrapped networks (`--model=file:`, `keras_hub:`).
"""

import json
import pathlib

import keras
import numpy as np
import pytest

import mixmo_tf
from mixmo_tf import training
from mixmo_tf.models import PreActResNet18, WideResNet, from_backbone
from mixmo_tf.models.preact_resnet import preact_resnet18_backbone
from mixmo_tf.models.wide_resnet import wide_resnet_backbone
from tests.helpers import tiny_config

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def copy_hand_built_weights(hand, wrapped):
  """The hand-built network's weights into the wrapped one, layer by layer name."""
  trunk = wrapped.get_layer("trunk")
  for i in range(hand.num_members):
    convs = [l for l in wrapped.get_layer(f"stem_{i}").layers if l.weights]
    assert len(convs) == 1
    convs[0].set_weights(hand.get_layer(f"stem_{i}").get_weights())
  for layer in trunk.layers:
    if layer.weights:
      layer.set_weights(hand.get_layer(layer.name).get_weights())
  wrapped.get_layer("heads").set_weights(hand.get_layer("heads").get_weights())


@pytest.mark.parametrize("name", ["wide_resnet", "preact_resnet18"])
def test_wrapping_the_plain_networks_gives_the_hand_built_ones(name):
  if name == "wide_resnet":
    hand = WideResNet(depth=28, width=1, num_members=2, num_classes=100)
    backbone, size, count = wide_resnet_backbone(28, 1), 32, 382_280
  else:
    hand = PreActResNet18(width=1, num_members=2, num_classes=200, image_shape=(16, 16, 3))
    backbone, size, count = preact_resnet18_backbone(1, (16, 16, 3)), 16, 11_372_944
  wrapped = from_backbone(backbone, num_members=2, num_classes=hand.get_layer("heads").units)
  trainable = lambda m: sum(int(np.prod(w.shape)) for w in m.trainable_weights)
  assert trainable(hand) == trainable(wrapped) == count  # the official code's counts
  assert hand.count_params() == wrapped.count_params()  # BN statistics included
  assert wrapped.mask_shape == hand.mask_shape
  copy_hand_built_weights(hand, wrapped)
  rng = np.random.default_rng(0)
  x = [keras.ops.convert_to_tensor(rng.normal(size=(4, size, size, 3)), "float32")
       for _ in range(2)]
  masks, _ = mixmo_tf.sample_masks(4, *hand.mask_shape, 2, "cutmix", patch_probability=1.0,
                                   seed=3)
  for mode in (True, False):
    got = keras.ops.convert_to_numpy(wrapped(x + [masks], training=mode))
    want = keras.ops.convert_to_numpy(hand(x + [masks], training=mode))
    np.testing.assert_allclose(got, want, atol=1e-5)
  image = keras.ops.convert_to_numpy(x[0])
  np.testing.assert_allclose(wrapped.folded().predict(image, verbose=0),
                             hand.folded().predict(image, verbose=0), atol=1e-5)


def tiny_keras_hub_resnet():
  keras_hub = pytest.importorskip("keras_hub")
  return keras_hub.models.ResNetBackbone(
      input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
      stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
      use_pre_activation=False, image_shape=(None, None, 3))


BACKBONES = {  # name -> (builder, input scaling of its stem)
    "ResNet50": (lambda: keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(32, 32, 3)), "dataset"),
    "MobileNetV3Small": (lambda: keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3)), "backbone"),
    "MobileNetV3Large": (lambda: keras.applications.MobileNetV3Large(
        include_top=False, weights=None, input_shape=(32, 32, 3)), "backbone"),
    "EfficientNetV2B0": (lambda: keras.applications.EfficientNetV2B0(
        include_top=False, weights=None, input_shape=(32, 32, 3)), "backbone"),
    "keras_hub ResNet": (tiny_keras_hub_resnet, "dataset"),
}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_library_backbones_wrap_fold_and_round_trip(name, tmp_path):
  """Stems through the first convolution on a 16x16 grid (stride 2 at 32 px), M = 2 copies that
  start at 1/M of the backbone's so the step-0 features on repeated images are the backbone's,
  folded inference equal to the M stems, a `.keras` round trip."""
  build, scaling = BACKBONES[name]
  backbone = build()
  model = from_backbone(backbone, num_members=2, num_classes=7, image_shape=(32, 32, 3))
  assert model.mask_shape == (16, 16) and model.linear_stem
  assert model.input_scaling == scaling
  x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
  logits = model.predict([x, x], verbose=0)
  assert logits.shape == (2, 2, 7) and np.all(np.isfinite(logits))
  features = keras.Model(model.inputs, model.get_layer("pool").input)([x, x, None])
  np.testing.assert_allclose(keras.ops.convert_to_numpy(features),
                             keras.ops.convert_to_numpy(backbone(x, training=False)),
                             rtol=1e-4, atol=1e-4)
  folded = model.folded()
  assert folded.num_inputs == 1
  np.testing.assert_allclose(folded.predict(x, verbose=0), logits, rtol=1e-4, atol=1e-5)
  model.save(tmp_path / "model.keras")
  reloaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
  np.testing.assert_allclose(reloaded.predict([x, x], verbose=0), logits, atol=1e-6)


def tiny_user_backbone(size=16):
  """A user's own network: conv stem, BN, ReLU, a strided conv, a residual add, a feature map."""
  images = keras.Input((size, size, 3))
  x = keras.layers.Conv2D(8, 3, padding="same", name="stem_conv")(images)
  x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
  y = keras.layers.Conv2D(8, 3, padding="same")(x)
  x = keras.layers.Add()([x, keras.layers.BatchNormalization()(y)])
  x = keras.layers.Conv2D(16, 3, strides=2, padding="same")(keras.layers.ReLU()(x))
  return keras.Model(images, x, name="user_net")


def test_every_mixing_method_runs_through_a_wrapped_network():
  model = from_backbone(tiny_user_backbone(), num_members=3, num_classes=4)
  x = [keras.ops.convert_to_tensor(np.random.default_rng(i).normal(size=(5, 16, 16, 3)),
                                   "float32") for i in range(3)]
  for method in mixmo_tf.mixing_methods():
    masks, kappa = mixmo_tf.sample_masks(5, 16, 16, 3, method, patch_probability=1.0, seed=2)
    logits = keras.ops.convert_to_numpy(model(x + [masks], training=True))
    assert logits.shape == (5, 3, 4) and np.all(np.isfinite(logits)), method


def test_a_split_crossed_by_a_skip_connection_is_refused_naming_the_layers():
  backbone = tiny_user_backbone()
  second = [l for l in backbone.layers if isinstance(l, keras.layers.Conv2D)][1]
  with pytest.raises(ValueError) as error:
    from_backbone(backbone, 2, 4, split=second.name)
  assert "add" in str(error.value) and "re_lu" in str(error.value)
  assert second.name in str(error.value)
  with pytest.raises(ValueError, match="image_shape"):
    from_backbone(tiny_keras_hub_resnet(), 2, 4)  # (None, None, 3): the grid is unknown.
  with pytest.raises(ValueError, match="split='nope'"):
    from_backbone(backbone, 2, 4, split="nope")


def test_a_nonlinear_stem_is_not_folded_and_runs_m_stems():
  backbone = tiny_user_backbone()
  relu = [l for l in backbone.layers if isinstance(l, keras.layers.ReLU)][0]
  model = from_backbone(backbone, 2, 4, split=relu.name)
  assert not model.linear_stem and model.folded() is model
  x = np.random.default_rng(3).normal(size=(2, 16, 16, 3)).astype("float32")
  assert model.predict([x, x], verbose=0).shape == (2, 2, 4)


def test_the_driver_trains_a_users_network_and_a_keras_hub_preset(tmp_path):
  """`--model=file:<backbone.keras>` and `--model=keras_hub:<preset folder>` (written here with
  save_to_preset, read offline with from_preset), recorded in config.json, rebuilt by evaluate."""
  tiny_user_backbone(32).save(tmp_path / "user.keras")
  tiny_keras_hub_resnet().save_to_preset(str(tmp_path / "preset"))
  for model in (f"file:{tmp_path / 'user.keras'}", f"keras_hub:{tmp_path / 'preset'}"):
    out = tmp_path / model.split(":")[0]
    config = tiny_config(out, model=model, image_size=32, train_subset=64, epochs=1,
                         lr_decay_epochs=(1,))
    results = training.run(config)
    assert results["global_step"] == 4 and np.isfinite(results["nll"])
    assert json.loads((out / "config.json").read_text())["model"] == model
    from mixmo_tf.evaluation.runs import evaluate_run
    again = evaluate_run(str(out), output_dir=str(tmp_path / "eval"))
    assert again["top1"] == pytest.approx(results["top1"], abs=1e-9)


def test_readme_section_runs_as_written(tmp_path, monkeypatch):
  """The README's "MixMo on your own network" code block, executed as written."""
  text = README.read_text()
  section = text[text.index("## MixMo on your own network"):]
  code = section[section.index("```python") + len("```python"):]
  code = code[:code.index("```")]
  assert len(code.strip().splitlines()) < 15
  monkeypatch.chdir(tmp_path)
  exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def test_jax_trains_wrapped_networks_without_tensorflow(jax_session):
  """The JAX session trained a user's network and the KerasHub preset through the driver (the
  Keras engine: MixMoTrainer.fit); their model.keras reload here, on TensorFlow, and predict the
  logits the JAX run's own evaluation saw (Top-1 within 1/N)."""
  from mixmo_tf.evaluation.runs import evaluate_run
  for name in ("user", "keras_hub"):
    run = jax_session.out / name
    results = json.loads((run / "results.json").read_text())
    assert results["backend"] == "jax" and results["global_step"] == 4
    again = evaluate_run(str(run), output_dir=str(run / "tf_eval"))
    assert abs(again["top1"] - results["top1"]) <= 1 / results["num_examples"]
