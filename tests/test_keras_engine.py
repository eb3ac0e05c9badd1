"""The Keras engine (`mixmo_tf.training.keras_engine`): `python -m mixmo_tf.train --engine=keras`,
the default off TensorFlow.

On the test process's TensorFlow backend (fast, in process): the run folder it writes, a damaged
newest checkpoint set aside and the run resumed from the previous one, ending equal to an
uninterrupted run, the settings each backend refuses (`training.engines.resolve`). Under JAX with
TensorFlow unimportable (a subprocess, where the process boundary is the point): kill -9 after a
checkpoint then a rerun, equal to an uninterrupted run; under PyTorch (where installed) a short
driver run. The JAX quickstart recipe and everything after training run in
tests/test_no_tensorflow.py.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mixmo_tf import training
from mixmo_tf.models import build_from_config
from mixmo_tf.run_folder import RunFolder, RunFolderError, array_checkpoints, checkpoints
from mixmo_tf.training import engines
from tests.conftest import REPO
from tests.helpers import TENSORFLOW_MODULES, WITHOUT_MODULES, run_python, tiny_config

# digits: a fixed subset of 512 training images, 16 unique per step -> 32 steps per epoch.
TINY_FLAGS = ["--dataset=digits", "--depth=10", "--width=1", "--num_members=2", "--mixing=cutmix",
              "--batch_repetitions=2", "--batch_size=32", "--epochs=2", "--lr_decay_epochs=2",
              "--seed=7", "--precision=float32", "--checkpoint_frequency=1", "--train_subset=512",
              "--eval_frequency=2", "--log_every_steps=1000"]
STEPS_PER_EPOCH = 32


def final_arrays(folder):
  """{name: array} of the newest checkpoint of a finished run."""
  newest = array_checkpoints.prefixes(os.path.join(folder, "checkpoints"))[-1]
  arrays = array_checkpoints.read(newest + array_checkpoints.SUFFIX)
  arrays.pop("__paths__")
  return newest, arrays


def max_difference(a, b):
  assert sorted(a) == sorted(b)
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


# XLA's compilation dominates these few-step JAX runs: its LLVM -O0 compiles ~4x faster (every
# run of a comparison compiles alike).
FAST_XLA = {"XLA_FLAGS": "--xla_backend_optimization_level=0"}


def train_without_tensorflow(args, backend="jax", **popen):
  """`python -m mixmo_tf.train ARGS` with TensorFlow unimportable, as a running process."""
  env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1",
             WITHOUT_MODULES=",".join(TENSORFLOW_MODULES), PYTHONPATH=str(REPO), **FAST_XLA)
  return subprocess.Popen([sys.executable, WITHOUT_MODULES, "-m", "mixmo_tf.train"] + args,
                          env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          **popen)


def finish(process, timeout=600):
  out, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, out[-6000:]
  assert "BLOCKED_MODULES_LOADED 0" in out, out[-3000:]
  return out


# -- On TensorFlow, in process ------------------------------------------------------------------


def test_run_folder_resume_and_damage_on_the_tensorflow_backend(tmp_path):
  import keras

  config = lambda out, **kw: tiny_config(tmp_path / out, epochs=2, lr_decay_epochs=(2,),
                                         checkpoint_frequency=1, eval_frequency=2,
                                         engine="keras", **kw)
  whole = training.run(config("whole"))
  folder = tmp_path / "whole"
  for name in ("flags.txt", "config.json", "data_info.json", "history.json", "model.keras",
               "model_folded.keras", "results.json"):
    assert (folder / name).is_file(), name
  history = json.loads((folder / "history.json").read_text())
  assert [h["epoch"] for h in history] == [1, 2]
  assert [h["step"] for h in history] == [89, 178]
  assert all(np.isfinite(h["train_loss"]) and 0 < h["learning_rate"] for h in history)
  assert "top1" in history[1] and "top1" not in history[0]
  assert whole["global_step"] == 178 and whole["backend"] == "tensorflow"
  assert whole["engine"] == "keras"
  assert whole["best_on_test"]["epoch"] == 2 and 0.0 <= whole["top1"] <= 1.0
  # Every checkpoint verifies against its sidecar; keep_checkpoints=3 keeps both.
  prefixes = array_checkpoints.prefixes(str(folder / "checkpoints"))
  assert [p.rsplit("-", 1)[1] for p in prefixes] == ["89", "178"]
  assert all(checkpoints.checkpoint_problem(p) is None for p in prefixes)

  # Readers (evaluate, export) rebuild the network from the newest checkpoint of the folder.
  run = RunFolder.open(str(folder))
  restored = build_from_config(run.read_config(), run.read_data_info())
  assert run.load_network_weights(restored) == prefixes[-1]
  x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
  network = keras.models.load_model(folder / "model.keras")
  np.testing.assert_allclose(restored([x, x]), network([x, x]), atol=1e-5)

  # Damage the newest checkpoint of a finished run: it is set aside, the previous one resumed
  # (weights, BN statistics, optimizer, step counter, data order), the last epoch trained
  # again, ending on the whole run's weights.
  training.run(config("damaged"))
  newest = tmp_path / "damaged" / "checkpoints" / f"ckpt-178{array_checkpoints.SUFFIX}"
  data = bytearray(newest.read_bytes())
  data[len(data) // 2] ^= 0xFF
  newest.write_bytes(bytes(data))
  repaired = training.run(config("damaged"))
  assert (tmp_path / "damaged" / "checkpoints" / "damaged" / newest.name).is_file()
  assert repaired["weights_fingerprint"] == whole["weights_fingerprint"]
  assert max_difference(final_arrays(folder)[1], final_arrays(tmp_path / "damaged")[1]) < 1e-6


def test_each_backend_refuses_only_what_cannot_run_there(tmp_path, monkeypatch):
  """`engines.resolve` refuses, naming the backend and every flag, what cannot run (a
  tf.distribute strategy or engine off TensorFlow, AugMix off TensorFlow, DataParallel off JAX,
  TFDS where TensorFlow is not importable), and accepts what can."""
  config = tiny_config(tmp_path, augmix=True, engine="custom", strategy="tpu")
  with pytest.raises(ValueError) as error:
    engines.resolve(config, "jax")
  for expected in ("KERAS_BACKEND=jax", "--engine=custom", "--augmix"):
    assert expected in str(error.value)
  with pytest.raises(ValueError, match="--strategy=mirrored"):
    engines.resolve(tiny_config(tmp_path, engine="keras", strategy="mirrored"), "tensorflow")
  with pytest.raises(ValueError, match="--strategy=data_parallel"):
    engines.resolve(tiny_config(tmp_path, engine="keras", strategy="data_parallel"), "tensorflow")
  with pytest.raises(ValueError, match="--jit_compile"):
    engines.resolve(tiny_config(tmp_path, engine="keras", jit_compile=True), "tensorflow")
  resolved = {b: engines.resolve(tiny_config(tmp_path), b) for b in ("tensorflow", "jax", "torch")}
  assert [(c.engine, c.strategy) for c in resolved.values()] == [
      ("custom", "mirrored"), ("keras", "data_parallel"), ("keras", "one_device")]
  # Read without TensorFlow on any backend: folders, Tiny ImageNet, released corrupted sets.
  folder = tiny_config(tmp_path, dataset="folder", data_dir=str(tmp_path), ood=(f"folder:{tmp_path}",))
  assert engines.resolve(folder, "jax").engine == "keras"
  monkeypatch.setattr(engines, "tfds_importable", lambda: False)
  with pytest.raises(ValueError) as error:
    engines.resolve(tiny_config(tmp_path, dataset="cifar100", ood=("svhn_cropped",),
                                corruptions="cifar10_c"), "jax")
  for expected in ("--dataset=cifar100", "--ood=svhn_cropped", "--corruptions=cifar10_c",
                   "not importable"):
    assert expected in str(error.value)


def test_a_folder_of_the_other_engine_is_refused_in_one_line(tmp_path):
  """A folder of tf.train checkpoints (the tf.distribute engine's) is not silently restarted by
  the Keras engine, and the reverse; the message names the engine that wrote it."""
  (tmp_path / "tf" / "checkpoints").mkdir(parents=True)
  (tmp_path / "tf" / "checkpoints" / "ckpt-5.index").write_bytes(b"")
  with pytest.raises(RunFolderError, match="--engine=custom"):
    training.run(tiny_config(tmp_path / "tf", engine="keras"))
  (tmp_path / "npz" / "checkpoints").mkdir(parents=True)
  (tmp_path / "npz" / "checkpoints" / f"ckpt-5{array_checkpoints.SUFFIX}").write_bytes(b"")
  with pytest.raises(RunFolderError, match="--engine=keras"):
    training.run(tiny_config(tmp_path / "npz", engine="custom"))


# -- Under JAX, without TensorFlow ----------------------------------------------------------------


def test_jax_resume_after_kill_equals_an_uninterrupted_run(tmp_path):
  killed, whole = tmp_path / "killed", tmp_path / "killed_whole"
  first = train_without_tensorflow(TINY_FLAGS + [f"--output_dir={killed}"])
  sidecar = killed / "checkpoints" / f"ckpt-{STEPS_PER_EPOCH}.sha256"
  deadline = time.time() + 300
  while not sidecar.exists() and first.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert first.poll() is None, first.communicate()[0][-3000:]
  os.kill(first.pid, signal.SIGKILL)
  first.communicate()
  assert not (killed / "results.json").exists()
  # The rerun (resumes), then the same flags uninterrupted, in one process: one JAX start-up.
  code = ("import sys\nfrom mixmo_tf import commands, train\n"
          "assert commands.call(train, sys.argv[1:]) == 0\n"
          "assert commands.call(train, sys.argv[1:-1] + [sys.argv[-1] + '_whole']) == 0\n")
  out = run_python([WITHOUT_MODULES, "-c", code] + TINY_FLAGS + [f"--output_dir={killed}"],
                   backend="jax", env=dict(FAST_XLA,
                                           WITHOUT_MODULES=",".join(TENSORFLOW_MODULES)))
  assert "BLOCKED_MODULES_LOADED 0" in out
  assert "Resumed from" in out, out[-3000:]
  (prefix_a, a), (prefix_b, b) = final_arrays(killed), final_arrays(whole)
  assert prefix_a.endswith("ckpt-64") and prefix_b.endswith("ckpt-64")
  difference = max_difference(a, b)
  print(f"JAX resume after SIGKILL vs uninterrupted: max |difference| {difference:.2e}")
  assert difference < 1e-5
  ours, theirs = (json.loads((f / "results.json").read_text()) for f in (killed, whole))
  assert ours["weights_fingerprint"] == theirs["weights_fingerprint"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_driver_without_tensorflow(tmp_path):
  """`KERAS_BACKEND=torch python -m mixmo_tf.train`: one epoch of the tiny run, then a rerun
  that finds the run complete and rewrites the final artifacts without training."""
  args = TINY_FLAGS + ["--epochs=1", "--eval_frequency=1", f"--output_dir={tmp_path}"]
  finish(train_without_tensorflow(args, "torch"))
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["backend"] == "torch" and results["global_step"] == STEPS_PER_EPOCH
  assert 0.0 <= results["top1"] <= 1.0 and np.isfinite(results["nll"])
  prefix, _ = final_arrays(tmp_path)
  assert prefix.endswith(f"ckpt-{STEPS_PER_EPOCH}")
  assert checkpoints.checkpoint_problem(prefix) is None
  out = finish(train_without_tensorflow(args, "torch"))
  assert "Resumed from" in out
  again = json.loads((tmp_path / "results.json").read_text())
  assert again["weights_fingerprint"] == results["weights_fingerprint"]
