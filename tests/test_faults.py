"""Faults that must lose nothing (docs: mixmo_tf/run_dir.py): damaged checkpoints, two runs in one
folder, a full disk, kills during final writes, and a loop of SIGKILLs at random moments."""

import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from mixmo_tf import custom_loop, evaluate, run_dir, run_lock, train
from tests.conftest import REPO
from tests.helpers import tiny_config

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
# A short digits run: 256 training examples, 16 steps per epoch, a checkpoint every epoch.
SMALL = dict(train_subset=256, epochs=2, checkpoint_frequency=1, eval_frequency=100)
CLI = ["--dataset=digits", "--depth=10", "--width=1", "--num_members=2", "--batch_size=32",
       "--batch_repetitions=2", "--train_subset=256", "--lr_decay_epochs=3", "--seed=3",
       "--precision=float32",
       "--log_every_steps=1", "--checkpoint_frequency=1", "--eval_frequency=100"]


def cli(out, epochs=4):
  return [sys.executable, "-m", "mixmo_tf.train", *CLI, f"--epochs={epochs}",
          f"--output_dir={out}"]


def weights(path):
  return [w.numpy() for w in keras.models.load_model(path).weights]


def assert_same_weights(a, b, atol=1e-5):
  assert len(a) == len(b)
  for wa, wb in zip(a, b):
    np.testing.assert_allclose(wa, wb, atol=atol)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished 2-epoch run with ckpt-16 and ckpt-32, and its final weights."""
  out = tmp_path_factory.mktemp("faults") / "run"
  train.run(tiny_config(out, **SMALL))
  return out, weights(out / "model.keras")


def _damage(path, how):
  data = bytearray(open(path, "rb").read())
  if how == "truncate":
    data = data[:len(data) // 2]
  elif how == "zero":
    data = bytearray(len(data))
  else:  # one flipped bit in the middle
    data[len(data) // 2] ^= 0x10
  open(path, "wb").write(bytes(data))


DAMAGE = [("data", "truncate"), ("data", "zero"), ("data", "bitflip"), ("index", "truncate"),
          ("index", "zero"), ("index", "bitflip")]


@pytest.mark.parametrize("part,how", DAMAGE)
def test_every_kind_of_damage_is_detected(finished_run, tmp_path, part, how):
  """Checksums and TensorFlow's own reader both see each damage (without and with a sidecar)."""
  source, _ = finished_run
  for sidecar in (True, False):
    out = tmp_path / f"run_{sidecar}"
    shutil.copytree(source / "checkpoints", out / "ckpts")
    prefix = out / "ckpts" / "ckpt-32"
    if not sidecar:
      os.remove(f"{prefix}.sha256")
    target = glob.glob(f"{prefix}.data-*")[0] if part == "data" else f"{prefix}.index"
    assert run_dir.checkpoint_problem(str(prefix)) is None
    _damage(target, how)
    assert run_dir.checkpoint_problem(str(prefix)) is not None, (part, how, sidecar)
    assert run_dir.newest_intact_checkpoint(str(out / "ckpts")).endswith("ckpt-16")


@pytest.mark.parametrize("part,how", [("data", "truncate"), ("index", "zero"),
                                      ("data", "bitflip")])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_resumed(
    finished_run, tmp_path, part, how, caplog):
  source, final = finished_run
  out = tmp_path / "run"
  shutil.copytree(source, out)
  newest = out / "checkpoints" / "ckpt-32"
  target = glob.glob(f"{newest}.data-*")[0] if part == "data" else f"{newest}.index"
  _damage(target, how)
  trainer = custom_loop.build_trainer(tiny_config(out, **SMALL))
  assert trainer.restore() == 16  # the intact previous checkpoint
  assert any("ckpt-32 is damaged" in r.getMessage() for r in caplog.records)
  moved = out / "checkpoints" / run_dir.DAMAGED_DIR / os.path.basename(target)
  assert moved.exists() and not os.path.exists(target)  # kept aside, never deleted
  results = trainer.fit()
  assert results["global_step"] == 32
  # The rerun retraces the lost epoch: same final weights as the uninterrupted run.
  assert_same_weights(weights(out / "model.keras"), final)


def test_no_intact_checkpoint_names_every_file(finished_run, tmp_path):
  source, _ = finished_run
  out = tmp_path / "run"
  shutil.copytree(source, out)
  for index in glob.glob(str(out / "checkpoints" / "*.index")):
    _damage(index, "zero")
  with pytest.raises(run_dir.RunFolderError) as error:
    custom_loop.build_trainer(tiny_config(out, **SMALL))
  message = str(error.value)
  assert "ckpt-16" in message and "ckpt-32" in message and "--overwrite" in message


def test_finished_run_rewrites_missing_artifacts_without_training(finished_run, tmp_path,
                                                                  monkeypatch):
  source, final = finished_run
  out = tmp_path / "run"
  shutil.copytree(source, out)
  # As a kill during the final writes leaves it: results.json (written last) and a model gone,
  # a half-written temporary file beside them.
  os.remove(out / "results.json")
  os.remove(out / "model_folded.keras")
  shutil.rmtree(out / "saved_model")
  (out / "model.tmp.keras").write_bytes(b"partial")
  history = (out / "history.json").read_text()
  monkeypatch.setattr(custom_loop.Trainer, "train_epoch", lambda *a: pytest.fail("trained again"))
  results = train.run(tiny_config(out, **SMALL))
  assert results["global_step"] == 32 and (out / "history.json").read_text() == history
  assert not (out / "model.tmp.keras").exists()
  assert_same_weights(weights(out / "model_folded.keras")[1:], final[2:])  # one stem, then same
  assert tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"] is not None
  assert json.loads((out / "results.json").read_text())["global_step"] == 32


def _wait_for(predicate, proc, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None and not predicate():
    time.sleep(0.05)
  return predicate()


@pytest.mark.slow
def test_second_run_in_the_same_folder_is_refused_and_readers_wait(tmp_path):
  out = tmp_path / "run"
  first = subprocess.Popen(cli(out, epochs=40), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  try:
    assert _wait_for(lambda: (out / "checkpoints" / "checkpoint").exists(), first)
    # The running first process may still create tensorboard/ (its writer's files appear at
    # the first flush); what the second run would write first is flags/config/data_info.
    listing = lambda: sorted(set(os.listdir(out)) - {"tensorboard"})
    run_files = ("flags.txt", "config.json", "data_info.json")
    before = listing()
    stamps = {name: os.stat(out / name).st_mtime_ns for name in run_files}
    second = subprocess.run(cli(out, epochs=40), cwd=REPO, env=ENV, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode != 0
    assert f"PID {first.pid} on host" in second.stderr, second.stderr[-2000:]
    assert "Traceback" not in second.stderr
    assert listing() == before
    assert {name: os.stat(out / name).st_mtime_ns for name in run_files} == stamps
    with pytest.raises(run_dir.RunFolderError, match="--allow_running"):
      evaluate.evaluate_path(str(out))
    results = evaluate.evaluate_path(str(out), allow_running=True)  # from the latest checkpoint
    assert 0.0 <= results["top1"] <= 1.0
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
  # The OS lock died with its process: the folder is free again.
  assert run_lock.running_holder(str(out)) is None


@pytest.mark.slow
def test_full_disk_stops_with_one_line_and_resumes_after(tmp_path):
  mount = tmp_path / "small"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(mount)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a small tmpfs here (needs root)")
  try:
    out = mount / "run"
    full = subprocess.run(cli(out, epochs=8), cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 1, full.stderr[-3000:]
    errors = [l for l in full.stderr.splitlines() if "Cannot write" in l]
    assert len(errors) == 1 and "MiB free" in errors[0] and str(out) in errors[0], errors
    assert "Traceback" not in full.stderr
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    assert latest and run_dir.checkpoint_problem(latest) is None  # the last good one
    assert not glob.glob(str(out / "**" / "*_temp*"), recursive=True)
    assert not glob.glob(str(out / "**" / "*.tmp"), recursive=True)
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
    resumed = subprocess.run(cli(out, epochs=8), cwd=REPO, env=ENV, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {latest}" in resumed.stderr
    assert json.loads((out / "results.json").read_text())["global_step"] == 8 * 16
  finally:
    subprocess.run(["umount", "-l", str(mount)])


STEP_LINE = re.compile(r"\] step (\d+)/\d+ epoch")


def _last_step(log_path):
  """The last step a run logged (0 before its first)."""
  return max((int(m.group(1)) for m in STEP_LINE.finditer(log_path.read_text())), default=0)


@pytest.mark.slow
def test_random_sigkills_lose_nothing(tmp_path):
  """Kill -9 at random moments (checkpoint and final saves included), rerun, repeat until the run
  finishes: the final weights equal an uninterrupted run's and every artifact is valid."""
  out, log = tmp_path / "killed", tmp_path / "log.txt"
  rng = random.Random(1234)
  kills, moments = 0, []
  # Two kills at later and later steps (an epoch's last step, 16 / 32 / 48, is followed by its
  # checkpoint write), then two during the final writes (models, SavedModel, results.json).
  targets = [16 * rng.randint(1, 2), 48, None, None]
  while True:
    with open(log, "w") as stderr:
      proc = subprocess.Popen(cli(out), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                              stderr=stderr)
    if kills < len(targets):
      target = targets[kills]
      hit = (lambda: _last_step(log) >= target) if target else (
          lambda: "Weights fingerprint" in log.read_text())
      if _wait_for(hit, proc) and proc.poll() is None:
        time.sleep(rng.uniform(0.0, 0.1 if target else 1.0))
        if proc.poll() is None:
          proc.send_signal(signal.SIGKILL)
          proc.wait()
          kills += 1
          moments.append(f"step {_last_step(log)}" if target else "final writes")
          continue
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    break
  print(f"fault injection: {kills} SIGKILLs survived ({', '.join(moments)})")
  assert kills == len(targets)
  clean = tmp_path / "clean"  # The same flags as `cli`, uninterrupted, in this process.
  train.run(tiny_config(clean, train_subset=256, lr_decay_epochs=(3,), seed=3, epochs=4,
                        checkpoint_frequency=1, eval_frequency=100, log_every_steps=1))
  for name in ("model.keras", "model_folded.keras"):
    assert_same_weights(weights(out / name), weights(clean / name), atol=1e-4)
  assert json.loads((out / "results.json").read_text())["global_step"] == 64
  history = json.loads((out / "history.json").read_text())
  assert [h["epoch"] for h in history] == [1, 2, 3, 4]
  assert tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"] is not None
  assert not glob.glob(str(out / "**" / "*.tmp*"), recursive=True)


@pytest.mark.parametrize("loop", ["custom", "keras"])
def test_crash_right_after_a_checkpoint_keeps_every_history_entry(tmp_path, monkeypatch, loop):
  """A crash just after epoch 2's checkpoint write (the moment a SIGKILL once hit in the loop
  test above): the rerun finds the run complete and history.json still has both epochs. With
  the checkpoint written before the history, epoch 2's entry was lost."""
  from mixmo_tf import keras_loop
  run = custom_loop.run if loop == "custom" else keras_loop.run
  name = "save" if loop == "custom" else "save_arrays"
  original = getattr(run_dir.RunDir, name)

  def save_then_crash(self, *args):
    path = original(self, *args)
    if str(path).endswith("-32"):  # Epoch 2 of 2 (256 examples, 16 unique per step).
      raise KeyboardInterrupt("crash right after the checkpoint")
    return path

  monkeypatch.setattr(run_dir.RunDir, name, save_then_crash)
  config = tiny_config(tmp_path, **SMALL)
  with pytest.raises(KeyboardInterrupt):
    run(config)
  monkeypatch.setattr(run_dir.RunDir, name, original)
  results = run(config)
  assert results["global_step"] == 32
  history = json.loads((tmp_path / "history.json").read_text())
  assert [(h["epoch"], h["step"]) for h in history] == [(1, 16), (2, 32)]
