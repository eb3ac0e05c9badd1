"""The training driver: quickstart, resume, distribution, export, real data."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from mixmo_tf import train
from tests.conftest import REPO
from tests.helpers import tiny_config

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
  """The README's main job, exactly as the README runs it, into a temporary output_dir."""
  out = tmp_path_factory.mktemp("quickstart") / "run"
  proc = subprocess.run([sys.executable, "-m", "mixmo_tf.train",
                         "--flagfile=flags/quickstart.flags", f"--output_dir={out}"],
                        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out


@pytest.mark.slow
def test_quickstart_accuracy_and_artifacts(quickstart_run):
  results = json.loads((quickstart_run / "results.json").read_text())
  assert results["top1"] >= 0.90, results
  assert results["global_step"] == 30 * (1438 // 32)
  for name in ("flags.txt", "config.json", "history.json", "model.keras", "data_info.json",
               "saved_model/saved_model.pb"):
    assert (quickstart_run / name).exists(), name
  assert list((quickstart_run / "tensorboard").glob("events.out.tfevents.*"))
  assert tf.train.latest_checkpoint(str(quickstart_run / "checkpoints")).endswith("ckpt-1320")
  assert "--num_members=2" in (quickstart_run / "flags.txt").read_text()
  for key in ("top5", "nll", "top1_member_0", "top1_member_1", "nll_c", "ece"):
    assert key in results


@pytest.mark.slow
def test_saved_model_loads_without_mixmo_tf(quickstart_run, tmp_path):
  model = keras.models.load_model(quickstart_run / "model.keras")
  info = json.loads((quickstart_run / "data_info.json").read_text())
  images = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3)).astype(np.uint8)
  x = (images / 255.0 - np.array(info["mean"])) / np.array(info["std"])
  logits = model.predict([x.astype(np.float32)] * 2, verbose=0)
  np.save(tmp_path / "images.npy", images)
  script = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] == 'mixmo_tf':
      raise ImportError('mixmo_tf is blocked in this process')
sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if p not in ('', {str(REPO)!r})]
import numpy as np, tensorflow as tf
try:
  import mixmo_tf
  raise SystemExit('mixmo_tf importable')
except ImportError:
  pass
loaded = tf.saved_model.load({str(quickstart_run / 'saved_model')!r})
out = loaded.signatures['serving_default'](images=tf.constant(np.load({str(tmp_path / 'images.npy')!r})))
np.save({str(tmp_path / 'probs.npy')!r}, out['probs'].numpy())
np.save({str(tmp_path / 'member.npy')!r}, out['member_probs'].numpy())
"""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("PYTHONPATH", None)
  proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  member = tf.nn.softmax(logits).numpy()
  ensemble = tf.nn.softmax(logits.mean(axis=1)).numpy()
  np.testing.assert_allclose(np.load(tmp_path / "member.npy"), member, atol=1e-5)
  np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), ensemble, atol=1e-5)


@pytest.mark.slow
def test_evaluate_reproduces_quickstart_results_and_plots(quickstart_run, tmp_path):
  from PIL import Image
  from mixmo_tf import evaluate
  trained = json.loads((quickstart_run / "results.json").read_text())
  for source in (quickstart_run, quickstart_run / "model.keras", quickstart_run / "saved_model"):
    out = tmp_path / source.name
    results = evaluate.evaluate_path(str(source), output_dir=str(out),
                                     plots=source.name == "run")
    for key in ("top1", "top5", "top1_member_0", "top1_member_1"):
      assert results[key] == pytest.approx(trained[key], abs=1e-9), (source, key)
    for key in ("nll", "nll_c", "ece", "diversity_dre"):
      assert results[key] == pytest.approx(trained[key], abs=1e-4), (source, key)
    assert json.loads((out / "metrics.json").read_text())["top1"] == results["top1"]
    assert (out / "metrics_row.md").read_text().count("|") > 8
  for name in ("reliability", "member_vs_ensemble", "stem_filters", "active_filters"):
    image = np.asarray(Image.open(tmp_path / "run" / f"{name}.png").convert("L"))
    assert image.shape == (400, 600) and image.std() > 5, name


def test_augmix_training_steps_on_digits(tmp_path):
  results = train.run(tiny_config(tmp_path, max_steps=2, augmix=True, msda="cutmix"))
  assert results["global_step"] == 2 and np.isfinite(results["nll"])


@pytest.mark.slow
def test_augmix_training_steps_on_cifar10_jpegs(cifar10_folder, tmp_path):
  results = train.run(tiny_config(tmp_path, dataset="folder", data_dir=str(cifar10_folder),
                                  train_subset=256, max_steps=2, augmix=True))
  assert results["global_step"] == 2 and np.isfinite(results["nll"])


def test_resume_continues_and_matches_uninterrupted(tmp_path):
  straight = train.run(tiny_config(tmp_path / "a", max_steps=30, checkpoint_frequency=1))
  first = train.Trainer(tiny_config(tmp_path / "b", max_steps=17))
  first.fit()
  resumed = train.Trainer(tiny_config(tmp_path / "b", max_steps=30))
  assert resumed.restore() == 17
  results = resumed.fit()
  assert results["global_step"] == straight["global_step"] == 30
  a = keras.models.load_model(tmp_path / "a" / "model.keras")
  b = keras.models.load_model(tmp_path / "b" / "model.keras")
  # Same seed, same data order and step seeds: the resumed run retraces the uninterrupted one.
  for wa, wb in zip(a.weights, b.weights):
    np.testing.assert_allclose(wa.numpy(), wb.numpy(), atol=1e-5)


def test_mirrored_two_replicas_equals_single_device_update():
  proc = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "mirrored_equivalence.py")],
                        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("MAXDIFF")][-1]
  diff, moved = float(line.split()[1]), float(line.split()[3])
  assert moved > 1e-3  # the step did change the weights
  assert diff < 1e-5, line


def test_training_runs_all_methods_two_steps(tmp_path):
  for i, overrides in enumerate([dict(num_members=1, batch_repetitions=1, mixing="linear"),
                                 dict(mixing="linear"), dict(mixing="mimo", weight_root=1.0),
                                 dict(msda="cutmix"), dict(msda="mixup", num_members=1,
                                                           batch_repetitions=1)]):
    results = train.run(tiny_config(tmp_path / str(i), max_steps=2, **overrides))
    assert results["global_step"] == 2 and np.isfinite(results["nll"])


@pytest.mark.slow
def test_real_cifar10_folder_two_epochs(cifar10_folder, tmp_path):
  """WRN-10-1, M = 2, two epochs on 10k real CIFAR-10 JPEGs through --dataset=folder.

  Measured 2026-11-26 (BUILD_NOTES.md), this configuration (MIMO mixing, kappa = 1/2, input
  repetition 0.5, batch 32): 30.9% (members 30.7%). Cut-MixMo in the same budget: 27.9%; the
  vanilla network (M = 1): 31.7%. The bar leaves a margin for platform float differences.
  """
  config = tiny_config(tmp_path, dataset="folder", data_dir=str(cifar10_folder),
                       train_subset=10000, epochs=2, batch_size=32, batch_repetitions=1,
                       mixing="mimo", weight_root=1.0, input_repetition_probability=0.5,
                       base_learning_rate=0.4, lr_warmup_epochs=0.1, lr_decay_epochs=(2,),
                       eval_frequency=2)
  results = train.run(config)
  print("CIFAR-10 folder, WRN-10-1, M=2, 2 epochs, 10k subset: top1", results["top1"])
  assert results["num_examples"] == 10000
  assert results["top1"] >= 0.28, results


def test_warmup_matches_official_step_counts(tmp_path):
  """b x ceil(N / B) steps per warmup epoch: 782 / 1564 / 3128 for CIFAR's 50,000 at B = 64."""
  for b in (1, 2, 4):
    trainer = train.Trainer(tiny_config(tmp_path / str(b), batch_repetitions=b, batch_size=64))
    assert trainer.warmup_steps() == b * -(-1438 // 64)
    assert trainer.steps_per_epoch == 1438 // (64 // b)
