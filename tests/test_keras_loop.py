"""The Keras-native loop behind `python -m mixmo_tf.train` off TensorFlow (`mixmo_tf.keras_loop`).

On the test process's TensorFlow backend (fast, in process): the run folder it writes, a damaged
newest checkpoint set aside and the run resumed from the previous one, ending equal to an
uninterrupted run, the flags and folders it refuses. Under JAX with TensorFlow unimportable
(subprocesses through tests/scripts/no_tensorflow.py, where the process boundary is the point):
the README's quickstart recipe end to end (12 epochs, >= 90% test Top-1), and kill -9 after a
checkpoint then a rerun, equal to an uninterrupted run; under PyTorch (where installed) a short
driver run.
"""

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mixmo_tf import array_checkpoint, keras_loop, run_dir
from mixmo_tf.run_folder import RunFolderError
from tests.helpers import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
NO_TF = str(REPO / "tests" / "scripts" / "no_tensorflow.py")
# digits: 1,437 training images, 16 unique per step -> 89 steps per epoch.
TINY_FLAGS = ["--dataset=digits", "--depth=10", "--width=1", "--num_members=2", "--mixing=cutmix",
              "--batch_repetitions=2", "--batch_size=32", "--epochs=2", "--lr_decay_epochs=2",
              "--seed=7", "--precision=float32", "--checkpoint_frequency=1",
              "--eval_frequency=2", "--log_every_steps=1000"]
# The quickstart's recipe on a 12-epoch schedule (the full 30 epochs: 98.9%, BUILD_NOTES.md).
SHORT_QUICKSTART = ["--flagfile=flags/quickstart.flags", "--epochs=12", "--lr_decay_epochs=6,9,11",
                    "--eval_frequency=4", "--checkpoint_frequency=4"]
STEPS_PER_EPOCH = 89


def final_arrays(folder):
  """{name: array} of the newest checkpoint of a finished run."""
  newest = run_dir.array_checkpoints(os.path.join(folder, "checkpoints"))[-1]
  arrays = array_checkpoint.read(newest + array_checkpoint.SUFFIX)
  arrays.pop("__paths__")
  return newest, arrays


def max_difference(a, b):
  assert sorted(a) == sorted(b)
  return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


def torch_env():
  return dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1")


def jax_env():
  # XLA's optimisation stays on: without it (--xla_backend_optimization_level=0, which the
  # few-step tests use) the quickstart's steps run 20x slower.
  return dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")


def train_without_tensorflow(args, env=None, **popen):
  return subprocess.Popen([sys.executable, NO_TF, "-m", "mixmo_tf.train"] + args, cwd=REPO,
                          env=env or jax_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **popen)


# Resumes the run of the flags in argv[1:], then trains them uninterrupted into argv[1]'s folder
# + "_whole", in one process (one JAX start-up and compilation for both).
RESUME_THEN_WHOLE = """
import dataclasses, sys
from absl import flags, logging
from mixmo_tf import train
from mixmo_tf.config import config_from_flags, define_flags
logging.set_verbosity(logging.INFO)
define_flags()
flags.FLAGS(["train"] + sys.argv[1:])
config = config_from_flags(flags.FLAGS)
train.run(config)
train.run(dataclasses.replace(config, output_dir=config.output_dir + "_whole"))
"""


def finish(process, timeout=600):
  out, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, out[-6000:]
  assert "TENSORFLOW_MODULES 0" in out, out[-3000:]
  return out


# -- On TensorFlow, in process ------------------------------------------------------------------


def test_run_folder_resume_and_damage_on_the_tensorflow_backend(tmp_path):
  import keras

  from mixmo_tf import predict
  config = lambda out, **kw: tiny_config(tmp_path / out, epochs=2, lr_decay_epochs=(2,),
                                         checkpoint_frequency=1, eval_frequency=2, **kw)
  whole = keras_loop.run(config("whole"))
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
  assert whole["best_on_test"]["epoch"] == 2 and 0.0 <= whole["top1"] <= 1.0
  # Every checkpoint verifies against its sidecar; keep_checkpoints=3 keeps both.
  prefixes = run_dir.array_checkpoints(str(folder / "checkpoints"))
  assert [p.rsplit("-", 1)[1] for p in prefixes] == ["89", "178"]
  assert all(run_dir.checkpoint_problem(p) is None for p in prefixes)

  # evaluate / export read a run folder without model.keras from its newest checkpoint.
  info, saved_config = predict.read_run_files(str(folder))
  restored = predict.model_from_checkpoint(str(folder), saved_config, info)
  x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
  network = keras.models.load_model(folder / "model.keras")
  np.testing.assert_allclose(restored([x, x]), network([x, x]), atol=1e-5)

  # Damage the newest checkpoint of a finished run: it is set aside, the previous one resumed
  # (weights, BN statistics, optimizer, step counter, data order), the last epoch trained
  # again, ending on the whole run's weights.
  keras_loop.run(config("damaged"))
  newest = tmp_path / "damaged" / "checkpoints" / f"ckpt-178{array_checkpoint.SUFFIX}"
  data = bytearray(newest.read_bytes())
  data[len(data) // 2] ^= 0xFF
  newest.write_bytes(bytes(data))
  repaired = keras_loop.run(config("damaged"))
  assert (tmp_path / "damaged" / "checkpoints" / "damaged" / newest.name).is_file()
  assert repaired["weights_fingerprint"] == whole["weights_fingerprint"]
  assert max_difference(final_arrays(folder)[1], final_arrays(tmp_path / "damaged")[1]) < 1e-6


def test_refuses_tensorflow_only_flags_and_a_tensorflow_run_folder(tmp_path):
  config = tiny_config(tmp_path / "a", augmix=True, corruptions="cifar10_c",
                       dataset="cifar100", strategy="tpu")
  with pytest.raises(ValueError) as error:
    keras_loop.check_supported(config, "jax")
  for expected in ("KERAS_BACKEND=jax", "--augmix", "--corruptions=cifar10_c",
                   "--dataset=cifar100", "--strategy=tpu"):
    assert expected in str(error.value)
  keras_loop.check_supported(tiny_config(tmp_path / "b", dataset="folder"), "jax")  # Supported.
  # A folder of tf.train checkpoints (the TensorFlow loop's) is not silently restarted.
  (tmp_path / "c" / "checkpoints").mkdir(parents=True)
  (tmp_path / "c" / "checkpoints" / "ckpt-5.index").write_bytes(b"")
  with pytest.raises(RunFolderError, match="KERAS_BACKEND=tensorflow"):
    keras_loop.run(tiny_config(tmp_path / "c"))


# -- Under JAX, without TensorFlow ----------------------------------------------------------------


def test_jax_quickstart_without_tensorflow(tmp_path):
  """The README's quickstart recipe under KERAS_BACKEND=jax, TensorFlow unimportable, on a
  12-epoch schedule (to keep the suite short)."""
  out = finish(train_without_tensorflow(SHORT_QUICKSTART + [f"--output_dir={tmp_path}"]))
  results = json.loads((tmp_path / "results.json").read_text())
  print(f"JAX quickstart, 12 epochs: top1 {results['top1']:.4f}, "
        f"{results['train_seconds']:.0f} s of training")
  assert results["backend"] == "jax" and results["global_step"] == 12 * 44
  assert results["top1"] >= 0.90, out[-3000:]
  history = json.loads((tmp_path / "history.json").read_text())
  assert len(history) == 12 and sum("top1" in h for h in history) == 3
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["precision"] == "float32"  # auto: CPU with the jax backend.
  for name in ("model.keras", "model_folded.keras", "data_info.json", "flags.txt"):
    assert (tmp_path / name).is_file(), name
  prefixes = run_dir.array_checkpoints(str(tmp_path / "checkpoints"))
  assert [p.rsplit("-", 1)[1] for p in prefixes] == ["176", "352", "528"]
  assert all(run_dir.checkpoint_problem(p) is None for p in prefixes)
  assert "no TensorBoard summaries" in out and not (tmp_path / "saved_model").exists()


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
  second = subprocess.Popen([sys.executable, NO_TF, "-c", RESUME_THEN_WHOLE] + TINY_FLAGS
                            + [f"--output_dir={killed}"], cwd=REPO, env=jax_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  out = finish(second)
  assert "Resumed from" in out, out[-3000:]
  (prefix_a, a), (prefix_b, b) = final_arrays(killed), final_arrays(whole)
  assert prefix_a.endswith("ckpt-178") and prefix_b.endswith("ckpt-178")
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
  finish(train_without_tensorflow(args, torch_env()))
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["backend"] == "torch" and results["global_step"] == STEPS_PER_EPOCH
  assert 0.0 <= results["top1"] <= 1.0 and np.isfinite(results["nll"])
  prefix, _ = final_arrays(tmp_path)
  assert prefix.endswith(f"ckpt-{STEPS_PER_EPOCH}") and run_dir.checkpoint_problem(prefix) is None
  out = finish(train_without_tensorflow(args, torch_env()))
  assert "Resumed from" in out
  again = json.loads((tmp_path / "results.json").read_text())
  assert again["weights_fingerprint"] == results["weights_fingerprint"]
