"""Reliability: bad flags rejected early, incompatible resumes refused, NaN stops cleanly, bad image
trees named, safe loading, mask properties (kills, damaged checkpoints, full disk: test_faults.py)."""

import dataclasses
import hashlib
import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st
from PIL import Image

from mixmo_tf import build_model, commands, mixmo_weights, sample_masks, training
from mixmo_tf import train as train_command
from mixmo_tf.core.mixing import mixing_methods
from mixmo_tf.data import datasets
from mixmo_tf.data.info import DataInfo
from mixmo_tf.deploy.tf_saved_model import export_saved_model
from mixmo_tf.evaluation.predict import load_network
from mixmo_tf.run_folder import checkpoints
from mixmo_tf.run_folder.lock import running_holder
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
    (dict(engine="pytorch"), "engine"), (dict(seed=-1), "seed"),
])
def test_invalid_flags_rejected_before_reading_data(overrides, flag, tmp_path, monkeypatch):
  """Both engines (and the tf.distribute engine given a strategy) refuse the flag with a
  ValueError naming it, before any data is read and before the run folder is created."""
  def no_data(*args, **kwargs):
    raise AssertionError("data was read before the flags were validated")
  monkeypatch.setattr(datasets, "load", no_data)
  config = dataclasses.replace(tiny_config(tmp_path / "run"), **overrides)
  value = str(getattr(config, flag))
  if flag == "engine":
    attempts = [(config, None)]
  else:
    attempts = [(dataclasses.replace(config, engine=engine), None)
                for engine in ("custom", "keras")] + [
                    (config, tf.distribute.OneDeviceStrategy("/cpu:0"))]
  for attempt, strategy in attempts:
    with pytest.raises(ValueError, match=f"--{flag}") as error:
      training.run(attempt, strategy)
    assert value in str(error.value) or flag in ("data_dir", "output_dir"), str(error.value)
    assert not (tmp_path / "run").exists()  # Nothing was written either.


def test_batch_size_must_divide_over_replicas():
  config = tiny_config("/tmp/x", batch_size=36, batch_repetitions=2)
  with pytest.raises(ValueError, match=r"--batch_size=36 .* 2 x 4 = 8"):
    config.validate(num_replicas=4)


def test_a_tf_distribute_strategy_is_refused_by_the_keras_engine(tmp_path):
  with pytest.raises(ValueError, match="--engine=keras"):
    training.run(tiny_config(tmp_path, engine="keras"), tf.distribute.OneDeviceStrategy("/cpu:0"))
  assert not tmp_path.joinpath("config.json").exists()


def _digest(directory):
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      with open(os.path.join(root, name), "rb") as f:
        h.update(name.encode() + f.read())
  return h.hexdigest()


def test_incompatible_resume_refused_and_overwrite(tmp_path):
  training.run(tiny_config(tmp_path, max_steps=3))
  before = _digest(tmp_path)
  for overrides in (dict(width=2), dict(num_members=3), dict(depth=16), dict(seed=8),
                    dict(batch_size=64)):
    with pytest.raises(ValueError, match="--" + list(overrides)[0]) as error:
      training.run(tiny_config(tmp_path, max_steps=3, **overrides))
    assert "--overwrite" in str(error.value)
  assert _digest(tmp_path) == before  # nothing in the directory changed
  assert running_holder(str(tmp_path)) is None  # and the refused runs hold no lock
  results = training.run(tiny_config(tmp_path, max_steps=2, width=2, overwrite=True))
  assert results["global_step"] == 2
  assert json.loads((tmp_path / "config.json").read_text())["width"] == 2
  assert [h["step"] for h in json.loads((tmp_path / "history.json").read_text())] == [2]


def test_non_finite_loss_stops_with_one_line_and_keeps_last_checkpoint(tmp_path, capsys):
  """The NaN stop as the shell sees it: exit status 1, one `error:` line (a NonFiniteLossError)
  naming the step, the epoch and the last good checkpoint, which stays intact and the latest."""
  small = dict(train_subset=256, log_every_steps=5)  # 16 steps per epoch.
  training.run(tiny_config(tmp_path, epochs=1, **small))
  ckpt_dir = tmp_path / "checkpoints"
  before = _digest(ckpt_dir)
  last = checkpoints.latest_checkpoint(str(ckpt_dir))
  assert last.endswith("ckpt-16") and checkpoints.checkpoint_problem(last) is None
  history = (tmp_path / "history.json").read_text()
  flagfile = tmp_path.parent / "nan.flags"
  flagfile.write_text(tiny_config(tmp_path, epochs=2, base_learning_rate=1e9, l2=1e3, **small)
                      .as_flagfile())
  capsys.readouterr()
  assert commands.call(train_command, [f"--flagfile={flagfile}"]) == 1
  errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, errors
  assert re.match(r"error: Loss became (nan|inf|-inf) at step (\d+) \(epoch 2\)", errors[0]), errors
  assert 16 < int(re.search(r"at step (\d+)", errors[0]).group(1)) <= 32, errors
  assert last in errors[0], errors
  assert _digest(ckpt_dir) == before
  assert checkpoints.latest_checkpoint(str(ckpt_dir)) == last
  assert (tmp_path / "history.json").read_text() == history  # no entry for the NaN epoch
  assert running_holder(str(tmp_path)) is None


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
  return datasets.load(tiny_config("/tmp/unused", dataset="folder", data_dir=str(root)))


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
  data = _load(root)
  images = data.train.images
  assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8 and data.info.num_train == 6
  assert any(np.all(img == 200) for img in images) and any(np.all(img == 100) for img in images)
  assert sorted(data.train.labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_keras_loading_is_safe_mode(tmp_path):
  inp = keras.Input((2,))
  model = keras.Model(inp, keras.layers.Lambda(lambda x: x * 2)(inp))
  model.save(tmp_path / "lambda.keras")
  with pytest.raises(ValueError, match="(?i)unsafe|lambda|safe_mode") as error:
    load_network(str(tmp_path / "lambda.keras"))
  assert "lambda.keras" in str(error.value)  # The one line names the file.


def test_saved_model_signature_rejects_bad_inputs(tmp_path):
  model = build_model("wide_resnet", depth=10, width=1, num_members=2, num_classes=3,
                      image_shape=(8, 8, 3))
  info = DataInfo("x", 3, (8, 8, 3), 1, 1, (0.5,) * 3, (0.25,) * 3, 0, False)
  export_saved_model(model, info, str(tmp_path / "sm"))
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
  m = keras.ops.convert_to_numpy(masks)
  assert m.shape == (batch, members, height, width, 1)
  np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-5)
  assert m.min() >= -1e-6 and m.max() <= 1 + 1e-6
  k = keras.ops.convert_to_numpy(kappa)
  assert np.all((k >= -1e-6) & (k <= 1 + 1e-6))
  np.testing.assert_allclose(k, m.mean(axis=(2, 3, 4)), atol=1e-5)
  if method not in ("linear", "mimo") and members == 2 and p == 1.0:
    assert set(np.unique(m)) <= {0.0, 1.0}
  w = keras.ops.convert_to_numpy(mixmo_weights(kappa, 3.0))
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
  w = keras.ops.convert_to_numpy(mixmo_weights(tf.constant(kappa), r))
  assert np.all(np.isfinite(w))
  np.testing.assert_allclose(w.sum(), kappa.shape[1], rtol=1e-4)


def test_resume_keeps_the_precision_the_run_started_with(tmp_path):
  training.run(tiny_config(tmp_path, max_steps=2, precision="float32"))
  with pytest.raises(ValueError, match="--precision: 'float32' there, 'mixed_bfloat16' now"):
    training.run(tiny_config(tmp_path, max_steps=3, precision="mixed_bfloat16"))
  # auto resolves to the saved precision, whatever this machine would pick for a new run.
  results = training.run(tiny_config(tmp_path, max_steps=3, precision="auto"))
  assert results["global_step"] == 3
  assert json.loads((tmp_path / "config.json").read_text())["precision"] == "float32"
