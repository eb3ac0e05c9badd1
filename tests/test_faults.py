"""Faults that must lose nothing (the run folder's contract: mixmo_tf/run_folder/folder.py): damaged
checkpoints of both formats, two runs in one folder, a full disk, kills during final writes, a
crash right after a checkpoint (both engines), and a loop of SIGKILLs at random moments."""

import glob
import json
import logging
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

from mixmo_tf import build_model, commands, runtime, training
from mixmo_tf import train as train_command
from mixmo_tf.evaluation import runs, tables
from mixmo_tf.evaluation.predict import load_network
from mixmo_tf.run_folder import RunFolder, RunFolderError, checkpoints
from mixmo_tf.run_folder.lock import running_holder
from mixmo_tf.training import keras_engine, tf_engine
from tests.conftest import REPO
from tests.helpers import tiny_config

# The runs in subprocesses use this process's oneDNN setting (whichever module imported
# TensorFlow first), so that their weights can equal in-process runs' to 1e-5.
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO),
           TF_ENABLE_ONEDNN_OPTS="1" if runtime.onednn_enabled() else "0")
# A short digits run: 256 training examples, 16 steps per epoch, a checkpoint every epoch, the
# progress line at every step (the SIGKILL loop watches it).
SMALL = dict(train_subset=256, epochs=2, checkpoint_frequency=1, eval_frequency=100,
             log_every_steps=1)
STEPS_PER_EPOCH = 16


def small_config(out, **overrides):
  return tiny_config(out, **dict(SMALL, **overrides))


@pytest.fixture(scope="module")
def flagfile(tmp_path_factory):
  """SMALL as a flagfile, so that the command runs exactly the configuration of the fixtures."""
  path = tmp_path_factory.mktemp("flags") / "small.flags"
  path.write_text(small_config("unused").as_flagfile())
  return path


def cli(out, flagfile, **overrides):
  """`python -m mixmo_tf.train` of SMALL (with `overrides`) into `out`, as an argv."""
  return [sys.executable, "-m", "mixmo_tf.train", *train_args(out, flagfile, **overrides)]


def train_args(out, flagfile, **overrides):
  return [f"--flagfile={flagfile}", f"--output_dir={out}",
          *(f"--{name}={value}" for name, value in overrides.items())]


def weights(path):
  return [w.numpy() for w in load_network(str(path)).weights]


def assert_same_weights(a, b, atol=1e-5):
  assert len(a) == len(b)
  for wa, wb in zip(a, b):
    np.testing.assert_allclose(wa, wb, atol=atol)


def assert_valid_final_models(out):
  """model_folded.keras is model.keras with its stems summed into one (the rest equal), and the
  SavedModel serves that network's ensemble probabilities on uint8 images."""
  model = load_network(str(out / "model.keras"))
  folded = load_network(str(out / "model_folded.keras"))
  for layer in (layer for layer in folded.layers if layer.weights):
    if layer.name == "stem_folded":
      stems = sum(stem.kernel.numpy() for stem in model.stem_layers())
      np.testing.assert_allclose(layer.kernel.numpy(), stems, atol=1e-5)
    else:
      assert_same_weights(layer.get_weights(), model.get_layer(layer.name).get_weights())
  info = json.loads((out / "data_info.json").read_text())
  images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3)).astype(np.uint8)
  x = ((images / np.float32(255.0) - np.float32(info["mean"])) / np.float32(info["std"]))
  logits = keras.ops.convert_to_numpy(model([x.astype(np.float32)] * model.num_members))
  expected = keras.ops.convert_to_numpy(keras.ops.softmax(logits.mean(axis=1)))
  serve = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
  np.testing.assert_allclose(serve(images=tf.constant(images))["probs"].numpy(), expected,
                             atol=1e-5)


def leftovers(out):
  """Temporary files and folders of interrupted writes (`.tmp`, TF's `_temp`, `.old` copies)."""
  found = []
  for pattern in ("*.tmp*", "*_temp*", "*.old"):
    found += glob.glob(str(out / "**" / pattern), recursive=True)
  return found


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished SMALL run (tf.distribute engine) with ckpt-16 and ckpt-32, and its final weights."""
  out = tmp_path_factory.mktemp("faults") / "run"
  training.run(small_config(out))
  return out, weights(out / "model.keras")


@pytest.fixture(scope="module")
def array_checkpoint_dir(tmp_path_factory):
  """ckpt-16 and ckpt-32 in the Keras engine's format (`.weights.npz` + sidecar), written by its
  store: a network's variables and a step counter."""
  directory = tmp_path_factory.mktemp("arrays") / "checkpoints"
  network = build_model("wide_resnet", depth=10, width=1, num_members=2, num_classes=10,
                        image_shape=(8, 8, 3))
  step = keras.Variable(0, dtype="int64", trainable=False)
  store = checkpoints.ArrayCheckpointStore(
      str(directory), lambda: {"network": list(network.variables), "trainer": [step]}, keep=3,
      guard=lambda name, write: write())
  for n in (16, 32):
    step.assign(n)
    store.save(n)
  return directory


@pytest.fixture
def info_logs(caplog):
  """caplog with absl's INFO records, as `python -m mixmo_tf.train` prints them (absl's verbosity
  is process-wide and TensorFlow's SavedModel export resets it to WARNING)."""
  from absl import logging as absl_logging
  previous = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  caplog.set_level(logging.INFO)
  yield caplog
  absl_logging.set_verbosity(previous)


def _damage(path, how):
  data = bytearray(open(path, "rb").read())
  if how == "truncate":
    data = data[:len(data) // 2]
  elif how == "zero":
    data = bytearray(len(data))
  else:  # one flipped bit in the middle
    data[len(data) // 2] ^= 0x10
  open(path, "wb").write(bytes(data))


def _file(prefix, part):
  """The file of checkpoint `prefix` that holds `part`: tf.train's data or index, or the
  Keras engine's one `.weights.npz` ("arrays")."""
  if part == "data":
    return glob.glob(f"{prefix}.data-*")[0]
  return f"{prefix}.index" if part == "index" else f"{prefix}.weights.npz"


HOWS = ("truncate", "zero", "bitflip")
DAMAGE = [(part, how) for part in ("data", "index", "arrays") for how in HOWS]


@pytest.mark.parametrize("part,how", DAMAGE)
def test_every_kind_of_damage_is_detected(finished_run, array_checkpoint_dir, tmp_path, part,
                                          how):
  """Checksums, and without a sidecar TensorFlow's reader or the zip CRCs, see each damage of
  either format; the damaged checkpoint is moved aside (kept) and the previous one is latest."""
  source = array_checkpoint_dir if part == "arrays" else finished_run[0] / "checkpoints"
  for sidecar in (True, False):
    directory = tmp_path / f"run_{sidecar}" / "checkpoints"
    shutil.copytree(source, directory)
    prefix = directory / "ckpt-32"
    if not sidecar:
      os.remove(f"{prefix}.sha256")
    target = _file(prefix, part)
    assert checkpoints.checkpoint_problem(str(prefix)) is None
    _damage(target, how)
    assert checkpoints.checkpoint_problem(str(prefix)) is not None, (part, how, sidecar)
    assert checkpoints.newest_intact_checkpoint(str(directory)).endswith("ckpt-16")
    assert checkpoints.latest_checkpoint(str(directory)).endswith("ckpt-16")
    aside = directory / checkpoints.DAMAGED_DIR
    assert (aside / os.path.basename(target)).exists() and not os.path.exists(target)


@pytest.mark.parametrize("part,how,sidecar", [("data", "bitflip", True),
                                              ("index", "zero", False)])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_resumed(
    finished_run, tmp_path, part, how, sidecar, info_logs):
  """With its sidecar (checksums) or without (a kill before the sidecar: TensorFlow's reader),
  a damaged ckpt-32 of a finished run is set aside, ckpt-16 resumed, the lost epoch retrained to
  the uninterrupted run's weights."""
  source, final = finished_run
  out = tmp_path / "run"
  shutil.copytree(source, out)
  newest = out / "checkpoints" / "ckpt-32"
  if not sidecar:
    os.remove(f"{newest}.sha256")
  target = _file(newest, part)
  _damage(target, how)
  damaged = open(target, "rb").read()
  results = training.run(small_config(out))
  messages = [r.getMessage() for r in info_logs.records]
  assert any("ckpt-32 is damaged" in m for m in messages), messages
  assert any(re.fullmatch(r"Resumed from .*/ckpt-16 at step 16\.", m) for m in messages), messages
  moved = out / "checkpoints" / checkpoints.DAMAGED_DIR / os.path.basename(target)
  assert moved.read_bytes() == damaged  # kept aside, never deleted
  assert results["global_step"] == 32
  history = json.loads((out / "history.json").read_text())
  assert [(h["epoch"], h["step"]) for h in history] == [(1, 16), (2, 32)]
  assert checkpoints.checkpoint_problem(str(newest)) is None  # written again, intact
  # The rerun retraces the lost epoch: same final weights as the uninterrupted run.
  assert_same_weights(weights(out / "model.keras"), final)


def test_no_intact_checkpoint_names_every_file(finished_run, tmp_path):
  source, _ = finished_run
  out = tmp_path / "run"
  shutil.copytree(source, out)
  for index in glob.glob(str(out / "checkpoints" / "*.index")):
    _damage(index, "zero")
  with pytest.raises(RunFolderError) as error:
    training.run(small_config(out))
  message = str(error.value)
  assert "ckpt-16" in message and "ckpt-32" in message and "--overwrite" in message
  aside = out / "checkpoints" / checkpoints.DAMAGED_DIR
  assert {"ckpt-16.index", "ckpt-32.index"} <= set(os.listdir(aside))  # kept, not deleted
  assert running_holder(str(out)) is None  # the failed run released the folder


def test_finished_run_rewrites_missing_artifacts_without_training(finished_run, tmp_path,
                                                                  monkeypatch):
  source, _ = finished_run
  out = tmp_path / "run"
  shutil.copytree(source, out)
  # As kills during the final writes leave it: results.json (written last) and a model gone, a
  # half-written model and SavedModel beside them, and the SavedModel set aside by an
  # interrupted directory replacement (the old one renamed, the new one not yet in).
  os.remove(out / "results.json")
  os.remove(out / "model_folded.keras")
  (out / "model.tmp.keras").write_bytes(b"partial")
  os.rename(out / "saved_model", out / "saved_model.old")
  (out / "saved_model.tmp").mkdir()
  (out / "saved_model.tmp" / "saved_model.pb").write_bytes(b"partial")
  folder = RunFolder.open(str(out))
  assert folder.missing_artifacts() == ["model_folded.keras", "results.json"]
  assert not folder.is_complete()
  history = (out / "history.json").read_text()
  monkeypatch.setattr(tf_engine.TFDistributeEngine, "train",
                      lambda *a: pytest.fail("trained again"))
  results = training.run(small_config(out))
  assert results["global_step"] == 32 and (out / "history.json").read_text() == history
  assert folder.missing_artifacts() == [] and folder.is_complete()
  assert not leftovers(out), leftovers(out)
  assert_valid_final_models(out)
  assert json.loads((out / "results.json").read_text())["global_step"] == 32


def test_an_extended_run_is_not_complete_until_it_finishes_again(finished_run, tmp_path,
                                                                 monkeypatch):
  source, _ = finished_run
  out = tmp_path / "run"
  shutil.copytree(source, out)

  def killed(*args):
    raise KeyboardInterrupt("killed while training the third epoch")

  monkeypatch.setattr(tf_engine.TFDistributeEngine, "train", killed)
  with pytest.raises(KeyboardInterrupt):
    training.run(small_config(out, epochs=3))  # Resumes at step 32 of 48.
  folder = RunFolder.open(str(out))
  assert json.loads((out / "config.json").read_text())["epochs"] == 3
  assert not folder.is_complete()
  assert folder.missing_artifacts()[-1:] == ["results.json"]


def _wait_for(predicate, proc, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None and not predicate():
    time.sleep(0.05)
  return predicate()


@pytest.mark.slow
def test_second_run_in_the_same_folder_is_refused_and_readers_wait(tmp_path, flagfile, capsys):
  out = tmp_path / "run"
  first = subprocess.Popen(cli(out, flagfile, epochs=40), cwd=REPO, env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    assert _wait_for(lambda: (out / "checkpoints" / "checkpoint").exists(), first)
    # The running first process may still create tensorboard/ (its writer's files appear at
    # the first flush); what the second run would write first is flags/config/data_info.
    listing = lambda: sorted(set(os.listdir(out)) - {"tensorboard"})
    run_files = ("flags.txt", "config.json", "data_info.json")
    before = listing()
    stamps = {name: os.stat(out / name).st_mtime_ns for name in run_files}
    capsys.readouterr()
    # The second run, as the shell runs it (in this process: the lock is the first process's).
    assert commands.call(train_command, train_args(out, flagfile, epochs=40)) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"PID {first.pid} on host" in errors[0], err[-2000:]
    assert "Traceback" not in err
    assert listing() == before
    assert {name: os.stat(out / name).st_mtime_ns for name in run_files} == stamps
    assert running_holder(str(out)).startswith(f"PID {first.pid} on host")
    with pytest.raises(RunFolderError, match="--allow_running"):
      runs.evaluate_run(str(out))
    results = runs.evaluate_run(str(out), allow_running=True)  # from the latest checkpoint
    assert 0.0 <= results["top1"] <= 1.0
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
  # The OS lock died with its process: the folder is free again.
  assert running_holder(str(out)) is None


@pytest.mark.slow
def test_full_disk_stops_with_one_line_and_resumes_after(tmp_path, flagfile, capfd, info_logs):
  mount = tmp_path / "small"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(mount)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a small tmpfs here (needs root)")
  try:
    out = mount / "run"
    args = train_args(out, flagfile, epochs=8)
    capfd.readouterr()
    assert commands.call(train_command, args) == 1  # In this process, as the shell runs it.
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if "Cannot write" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    assert "MiB free" in errors[0] and str(out) in errors[0], errors
    assert "Traceback" not in err
    latest = checkpoints.latest_checkpoint(str(out / "checkpoints"))
    assert latest and checkpoints.checkpoint_problem(latest) is None  # the last good one
    assert latest in errors[0]  # named by the error line
    assert not leftovers(out), leftovers(out)
    assert running_holder(str(out)) is None
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
    info_logs.clear()
    assert commands.call(train_command, args) == 0
    assert any(r.getMessage().startswith(f"Resumed from {latest} at step")
               for r in info_logs.records)
    assert json.loads((out / "results.json").read_text())["global_step"] == 8 * STEPS_PER_EPOCH
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 9))
  finally:
    subprocess.run(["umount", "-l", str(mount)])


STEP_LINE = re.compile(r"\] step (\d+)/\d+ epoch")


def _last_step(log_path):
  """The last step a run logged (0 before its first)."""
  return max((int(m.group(1)) for m in STEP_LINE.finditer(log_path.read_text())), default=0)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["custom", "keras"])
def test_random_sigkills_lose_nothing(finished_run, flagfile, tmp_path, engine):
  """Kill -9 at random moments (checkpoint and final saves included), rerun, repeat until the run
  finishes, with either engine: the final weights equal the uninterrupted run's (`finished_run`,
  the same flags; the engines train the same weights: tests/test_engines.py) and every artifact is
  valid."""
  out, log = tmp_path / "killed", tmp_path / "log.txt"
  rng = random.Random(1234)
  kills, moments = 0, []
  # Two kills just after an epoch's last step (16, then 32: each followed by its history entry
  # and checkpoint, 32 by the final evaluation), then one during the final writes (models,
  # SavedModel, results.json; test_finished_run_rewrites_missing_artifacts_without_training
  # leaves each of their partial states deterministically).
  targets = [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH, None]
  while True:
    with open(log, "w") as stderr:
      proc = subprocess.Popen(cli(out, flagfile, engine=engine), cwd=REPO, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=stderr)
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
  clean, _ = finished_run
  for name in ("model.keras", "model_folded.keras"):
    assert_same_weights(weights(out / name), weights(clean / name))
  assert json.loads((out / "results.json").read_text())["global_step"] == 32
  history = json.loads((out / "history.json").read_text())
  assert [(h["epoch"], h["step"]) for h in history] == [(1, 16), (2, 32)]
  assert_valid_final_models(out)
  assert RunFolder.open(str(out)).missing_artifacts() == []
  for prefix in glob.glob(str(out / "checkpoints" / "ckpt-*.sha256")):
    assert checkpoints.checkpoint_problem(prefix[:-len(".sha256")]) is None, prefix
  assert not leftovers(out), leftovers(out)


FINAL_WRITES = ("model.keras", "model_folded.keras", "saved_model", "results.json")


@pytest.mark.parametrize("killed_after", FINAL_WRITES[:-1])
def test_a_kill_after_each_final_write_is_reported_then_completed(finished_run, tmp_path,
                                                                  monkeypatch, killed_after):
  """A run killed between two of its final writes (training done, checkpoint written) is
  unfinished: evaluate says so and names what is missing, tables labels it; the rerun writes the
  rest without training, and the run is then complete and equal to the uninterrupted one."""
  source, final = finished_run
  out = tmp_path / "killed_run"
  shutil.copytree(source, out)
  for name in FINAL_WRITES:  # As the run stands when its last checkpoint is written.
    path = out / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
  folder = RunFolder.open(str(out))
  assert folder.final_artifacts() == FINAL_WRITES  # Trained on TensorFlow: a SavedModel too.
  written = []
  guarded = RunFolder.guarded

  def guarded_then_killed(self, name, write):
    result = guarded(self, name, write)
    written.append(name)
    if name == killed_after:
      raise KeyboardInterrupt(f"killed after writing {name}")
    return result

  monkeypatch.setattr(RunFolder, "guarded", guarded_then_killed)
  with pytest.raises(KeyboardInterrupt):
    training.run(small_config(out))
  monkeypatch.setattr(RunFolder, "guarded", guarded)
  done = FINAL_WRITES.index(killed_after) + 1
  assert written[-done:] == list(FINAL_WRITES[:done])  # In this order, results.json never.
  missing = list(FINAL_WRITES[done:])
  assert folder.missing_artifacts() == missing and not folder.is_complete()
  assert not leftovers(out), leftovers(out)
  evaluated = runs.evaluate_run(str(out))  # Its model.keras, into the run folder.
  assert evaluated["unfinished"] == missing
  assert "| killed_run (unfinished) |" in tables.table([str(out)])
  monkeypatch.setattr(tf_engine.TFDistributeEngine, "train",
                      lambda *a: pytest.fail("trained again"))
  assert training.run(small_config(out))["global_step"] == 32
  assert folder.missing_artifacts() == [] and folder.is_complete()
  assert "| killed_run |" in tables.table([str(out)])  # results.json now, not the unfinished metrics.
  assert_same_weights(weights(out / "model.keras"), final)
  assert_valid_final_models(out)
  assert not leftovers(out), leftovers(out)


def _old_and_new(tmp_path):
  """Two complete versions of a directory: `path` (old) and `path.tmp` (new, staged beside)."""
  path, staged = tmp_path / "saved_model", tmp_path / "saved_model.tmp"
  for directory, version in ((path, "old"), (staged, "new")):
    (directory / "variables").mkdir(parents=True)
    for name in ("saved_model.pb", "variables/variables.index", "variables/variables.data"):
      (directory / name).write_text(f"{version} {name}")
  return path, staged


def _version(path):
  """'old' or 'new' where `path` holds that complete version, else what it holds."""
  files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
  texts = {p.read_text() for p in path.rglob("*") if p.is_file()}
  versions = {t.split()[0] for t in texts}
  if len(files) == 3 and len(versions) == 1:
    return versions.pop()
  return files


@pytest.mark.parametrize("kill_at", ["aside", "in", "remove", "remove_midway"])
def test_a_kill_at_each_step_of_a_directory_replacement_leaves_a_complete_version(
    tmp_path, monkeypatch, kill_at):
  """run_folder.atomic.replace_directory, killed before each of its steps (old renamed aside,
  new renamed in, aside removed; or midway through the removal): once a reader opens the run
  (`RunFolder.open`, which runs `atomic.recover`) the folder holds the old complete version or
  the new one, never a part, and no aside copy is left."""
  from mixmo_tf.run_folder import RunFolder, atomic
  path, staged = _old_and_new(tmp_path)
  replaces, real_replace = [], os.replace  # atomic.os is os: patched for everyone below.

  def replace(src, dst):
    replaces.append(src)
    if (kill_at, len(replaces)) in (("aside", 1), ("in", 2)):
      raise KeyboardInterrupt(kill_at)
    real_replace(src, dst)

  def remove(target, **kwargs):
    if kill_at == "remove":
      raise KeyboardInterrupt(kill_at)
    os.remove(os.path.join(target, "saved_model.pb"))  # Part of the old copy deleted, then:
    raise KeyboardInterrupt(kill_at)

  monkeypatch.setattr(atomic.os, "replace", replace)
  monkeypatch.setattr(atomic.shutil, "rmtree", remove)
  with pytest.raises(KeyboardInterrupt):
    atomic.replace_directory(str(staged), str(path))
  monkeypatch.undo()
  (tmp_path / "config.json").write_text("{}")  # A run folder: `path` is its saved_model/.
  RunFolder.open(str(tmp_path))
  assert _version(path) == ("old" if kill_at in ("aside", "in") else "new")
  assert not os.path.exists(str(path) + atomic.ASIDE_SUFFIX)
  if staged.exists():  # Killed before the new version went in: a rerun's replacement.
    atomic.replace_directory(str(staged), str(path))
  assert _version(path) == "new" and not staged.exists()


@pytest.mark.parametrize("engine", ["custom", "keras"])
def test_crash_right_after_a_checkpoint_keeps_every_history_entry(tmp_path, monkeypatch, engine):
  """A crash just after epoch 2's checkpoint (files and sidecar) is written, the moment a SIGKILL
  once hit: the rerun finds training complete (trains nothing) and history.json still has both
  epochs. With the checkpoint written before the history, epoch 2's entry was lost. The policy
  lives in the run loop, for both engines; the seam is the checkpoints' public sidecar writer."""
  original = checkpoints.write_checksums

  def checksums_then_crash(prefix):
    original(prefix)
    if str(prefix).endswith("ckpt-32"):  # Epoch 2 of 2.
      raise KeyboardInterrupt("crash right after the checkpoint")

  monkeypatch.setattr(checkpoints, "write_checksums", checksums_then_crash)
  config = small_config(tmp_path, engine=engine)
  with pytest.raises(KeyboardInterrupt):
    training.run(config)
  assert checkpoints.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-32")
  assert not (tmp_path / "results.json").exists()
  monkeypatch.setattr(checkpoints, "write_checksums", original)
  engine_class = tf_engine.TFDistributeEngine if engine == "custom" else keras_engine.KerasEngine
  monkeypatch.setattr(engine_class, "train", lambda *a: pytest.fail("trained again"))
  results = training.run(config)
  assert results["global_step"] == 32 and results["engine"] == engine
  history = json.loads((tmp_path / "history.json").read_text())
  assert [(h["epoch"], h["step"]) for h in history] == [(1, 16), (2, 32)]
  assert all(np.isfinite(h["train_loss"]) for h in history)
