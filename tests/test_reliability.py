"""Reliability: bad flags rejected early, incompatible resumes refused, NaN stops cleanly, bad image
trees named, safe loading, mask properties (kills, damaged checkpoints, full disk: test_faults.py)."""

import dataclasses
import hashlib
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st
from PIL import Image

from mixmo_tf import data as data_lib
from mixmo_tf import custom_loop, export, mixmo_weights, sample_masks, train
from mixmo_tf.core.mixing import mixing_methods
from tests.helpers import tiny_config



@pytest.mark.parametrize("overrides,flag", [
    (dict(num_members=0), "num_members"), (dict(alpha=0.0), "alpha"),
    (dict(alpha=-1.0), "alpha"), (dict(weight_root=0.0), "weight_root"),
    (dict(patch_probability=1.5), "patch_probability"),
    (dict(patch_probability=-0.1), "patch_probability"), (dict(depth=12), "depth"),
    (dict(batch_size=33), "batch_size"), (dict(batch_size=30, batch_repetitions=4), "batch_size"),
    (dict(dataset="imagenet"), "dataset"), (dict(model="resnet50"), "model"),
    (dict(mixing="bogus"), "mixing"), (dict(msda="cutout"), "msda"),
    (dict(dataset="folder", data_dir="/nonexistent/dir"), "data_dir"),
    (dict(dataset="folder", data_dir=""), "data_dir"), (dict(output_dir=""), "output_dir"),
    (dict(output_dir="/proc/mixmo_cannot_write_here"), "output_dir"),
    (dict(msda_probability=2.0), "msda_probability"), (dict(epochs=0), "epochs"),
    (dict(precision="float8"), "precision"), (dict(strategy="horovod"), "strategy"),
])
def test_invalid_flags_rejected_before_reading_data(overrides, flag, tmp_path, monkeypatch):
  def no_data(*args, **kwargs):
    raise AssertionError("data was read before the flags were validated")
  monkeypatch.setattr(data_lib, "load", no_data)
  config = dataclasses.replace(tiny_config(tmp_path / "run"), **overrides)
  with pytest.raises(ValueError, match=f"--{flag}") as error:
    custom_loop.build_trainer(config, tf.distribute.OneDeviceStrategy("/cpu:0"))
  value = str(getattr(config, flag))
  assert value in str(error.value) or flag in ("data_dir", "output_dir")


def test_batch_size_must_divide_over_replicas():
  config = tiny_config("/tmp/x", batch_size=36, batch_repetitions=2)
  with pytest.raises(ValueError, match=r"--batch_size=36 .* 2 x 4 = 8"):
    config.validate(num_replicas=4)


def _digest(directory):
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      with open(os.path.join(root, name), "rb") as f:
        h.update(name.encode() + f.read())
  return h.hexdigest()


def test_incompatible_resume_refused_and_overwrite(tmp_path):
  train.run(tiny_config(tmp_path, max_steps=3))
  before = _digest(tmp_path)
  for overrides in (dict(width=2), dict(num_members=3), dict(depth=16)):
    with pytest.raises(ValueError, match="--" + list(overrides)[0]) as error:
      train.run(tiny_config(tmp_path, max_steps=3, **overrides))
    assert "--overwrite" in str(error.value)
  assert _digest(tmp_path) == before  # nothing in the directory changed
  results = train.run(tiny_config(tmp_path, max_steps=2, width=2, overwrite=True))
  assert results["global_step"] == 2


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
  train.run(tiny_config(tmp_path, epochs=1))
  ckpt_dir = tmp_path / "checkpoints"
  before = _digest(ckpt_dir)
  last = tf.train.latest_checkpoint(str(ckpt_dir))
  with pytest.raises(train.NonFiniteLossError, match=r"at step \d+ \(epoch 2\)") as error:
    train.run(tiny_config(tmp_path, epochs=2, base_learning_rate=1e9, l2=1e3))
  assert last in str(error.value)
  assert _digest(ckpt_dir) == before
  assert tf.train.latest_checkpoint(str(ckpt_dir)) == last


def _tree(root, bad=None, classes=("a", "b")):
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for c in classes:
      (root / split / c).mkdir(parents=True, exist_ok=True)
      for i in range(2):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)).save(
            root / split / c / f"{i}.png")
  return root


def _load(root):
  return data_lib.load(tiny_config("/tmp/unused", dataset="folder", data_dir=str(root)))


def test_corrupt_image_is_named(tmp_path):
  root = _tree(tmp_path)
  (root / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  with pytest.raises(ValueError, match="broken.jpg"):
    _load(root)


def test_empty_class_and_class_mismatch_are_named(tmp_path):
  root = _tree(tmp_path / "empty")
  (root / "train" / "c").mkdir()
  with pytest.raises(ValueError, match=r"train/c contains no images"):
    _load(root)
  root = _tree(tmp_path / "mismatch")
  _tree(tmp_path / "mismatch", classes=("z",))
  for f in (root / "test" / "z").iterdir():
    f.unlink()
  (root / "test" / "z").rmdir()
  with pytest.raises(ValueError, match=r"only in train: \['z'\]"):
    _load(root)


def test_grayscale_and_rgba_are_converted(tmp_path):
  root = _tree(tmp_path)
  Image.fromarray(np.full((8, 8), 200, np.uint8), "L").save(root / "train" / "a" / "gray.png")
  Image.fromarray(np.full((8, 8, 4), 100, np.uint8), "RGBA").save(root / "train" / "b" / "rgba.png")
  train_ds, _, info = _load(root)
  images = next(iter(train_ds.batch(100)))[0].numpy()
  assert images.shape == (6, 8, 8, 3) and info.num_train == 6
  assert any(np.all(img == 200) for img in images) and any(np.all(img == 100) for img in images)


def test_keras_loading_is_safe_mode(tmp_path):
  inp = keras.Input((2,))
  model = keras.Model(inp, keras.layers.Lambda(lambda x: x * 2)(inp))
  model.save(tmp_path / "lambda.keras")
  from mixmo_tf import evaluate
  with pytest.raises(ValueError, match="(?i)unsafe|lambda|safe_mode"):
    evaluate.load_predictor(str(tmp_path / "lambda.keras"))


def test_saved_model_signature_rejects_bad_inputs(tmp_path):
  from mixmo_tf import build_model
  model = build_model("wide_resnet", depth=10, width=1, num_members=2, num_classes=3,
                      image_shape=(8, 8, 3))
  info = data_lib.DataInfo("x", 3, (8, 8, 3), 1, 1, (0.5,) * 3, (0.25,) * 3, 0, False)
  export.export_saved_model(model, info, str(tmp_path / "sm"))
  serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
  ok = serve(images=tf.zeros([2, 8, 8, 3], tf.uint8))
  assert ok["probs"].shape == (2, 3) and ok["member_probs"].shape == (2, 2, 3)
  for bad in (tf.zeros([2, 8, 8, 3], tf.float32), tf.zeros([2, 9, 8, 3], tf.uint8),
              tf.zeros([8, 8, 3], tf.uint8), tf.zeros([2, 8, 8, 1], tf.uint8)):
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
      serve(images=bad)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 6), height=st.integers(1, 12), width=st.integers(1, 12),
       members=st.integers(1, 4), alpha=st.floats(0.05, 8.0),
       p=st.floats(0.0, 1.0), method=st.sampled_from(mixing_methods()),
       seed=st.integers(0, 2**30))
def test_mask_properties(batch, height, width, members, alpha, p, method, seed):
  masks, kappa = sample_masks(batch, height, width, members, method, alpha, p, seed)
  m = masks.numpy()
  assert m.shape == (batch, members, height, width, 1)
  np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-5)
  assert m.min() >= -1e-6 and m.max() <= 1 + 1e-6
  k = kappa.numpy()
  assert np.all((k >= -1e-6) & (k <= 1 + 1e-6))
  np.testing.assert_allclose(k, m.mean(axis=(2, 3, 4)), atol=1e-5)
  if method not in ("linear", "mimo") and members == 2 and p == 1.0:
    assert set(np.unique(m)) <= {0.0, 1.0}
  w = mixmo_weights(kappa, 3.0).numpy()
  assert np.all(np.isfinite(w))
  np.testing.assert_allclose(w.sum(axis=1), members, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(k=st.lists(st.sampled_from([0.0, 1.0, 0.5, 1e-30, 1 - 1e-7]), min_size=2, max_size=4),
       r=st.floats(0.1, 100.0))
def test_weights_finite_at_extremes(k, r):
  kappa = np.array([k], np.float32)
  if kappa.sum() == 0:
    kappa[0, 0] = 1.0
  kappa /= kappa.sum()
  w = mixmo_weights(tf.constant(kappa), r).numpy()
  assert np.all(np.isfinite(w))
  np.testing.assert_allclose(w.sum(), kappa.shape[1], rtol=1e-4)


def test_resume_keeps_the_precision_the_run_started_with(tmp_path):
  import json
  train.run(tiny_config(tmp_path, max_steps=2, precision="float32"))
  with pytest.raises(ValueError, match="--precision: 'float32' there, 'mixed_bfloat16' now"):
    train.run(tiny_config(tmp_path, max_steps=3, precision="mixed_bfloat16"))
  # auto resolves to the saved precision, whatever this machine would pick for a new run.
  results = train.run(tiny_config(tmp_path, max_steps=3, precision="auto"))
  assert results["global_step"] == 3
  assert json.loads((tmp_path / "config.json").read_text())["precision"] == "float32"
