"""No traceback for a user's mistake: every bad input gets one `error: ...` line and status 1 (or
absl's flag error and status 2), through each command's own `main` (`commands.call`), and one
subprocess per command shows the top-level handler does the same for `python -m`. BUILD_NOTES.md
lists these rows with their messages. A property-based test draws flag sets: each is accepted or
refused with a ValueError naming a flag, before any folder is created.
"""

import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from baselines import ensemble
from mixmo_tf import commands, evaluate, export, tables, train
from tests.helpers import offline, run_python

TINY = ["--dataset=digits", "--depth=10", "--width=1", "--num_members=2", "--batch_size=32",
        "--train_subset=64", "--epochs=1", "--lr_decay_epochs=1", "--precision=float32",
        "--log_every_steps=1000"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished tiny run (Keras engine: a quick one) and a folder that is no run."""
  root = tmp_path_factory.mktemp("user_errors")
  assert commands.call(train, TINY + ["--engine=keras", f"--output_dir={root / 'run'}"]) == 0
  (root / "foreign").mkdir()
  (root / "foreign" / "notes.txt").write_text("not a run")
  return root


def _copy(finished, tmp_path, edit=None):
  """A copy of the finished run, `edit(folder)` applied."""
  folder = tmp_path / "copy"
  shutil.copytree(finished / "run", folder)
  if edit:
    edit(folder)
  return folder


def _images(folder, count=2, bad=None, empty_class=False):
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for c in ("a", "b"):
      (folder / split / c).mkdir(parents=True, exist_ok=True)
      if empty_class and c == "b":
        continue
      for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)).save(
            folder / split / c / f"{i}.png")
  if bad:
    (folder / "train" / "a" / bad).write_bytes(b"not an image")
  return folder


# (command, argv builder (finished, tmp_path) -> argv, a piece of the expected message)
ROWS = {
    "train: unknown dataset": (train, lambda f, t: TINY + ["--dataset=imagenet3",
                                                           f"--output_dir={t}/o"],
                               "--dataset='imagenet3' is not valid"),
    "train: batch not divisible by b": (train, lambda f, t: TINY + [
        "--batch_size=30", "--batch_repetitions=4", f"--output_dir={t}/o"],
                                        "--batch_size=30 is not valid"),
    "train: negative seed": (train, lambda f, t: TINY + ["--seed=-1", f"--output_dir={t}/o"],
                             "--seed=-1"),
    "train: folder without --data_dir": (train, lambda f, t: TINY + [
        "--dataset=folder", f"--output_dir={t}/o"], "--data_dir is required"),
    "train: missing data folder": (train, lambda f, t: TINY + [
        "--dataset=folder", "--data_dir=/no/such/folder", f"--output_dir={t}/o"],
                                   "'/no/such/folder' is not an existing directory"),
    "train: folder without classes": (train, lambda f, t: TINY + [
        "--dataset=folder", f"--data_dir={_empty(t)}", f"--output_dir={t}/o"],
                                      "has no class folders"),
    "train: an empty class": (train, lambda f, t: TINY + [
        "--dataset=folder", f"--data_dir={_images(t / 'd', empty_class=True)}",
        f"--output_dir={t}/o"], "contains no images"),
    "train: unreadable image": (train, lambda f, t: TINY + [
        "--dataset=folder", f"--data_dir={_images(t / 'd', bad='x.png')}",
        "--train_subset=0", f"--output_dir={t}/o"], "Cannot decode image"),
    "train: unknown keras.applications network": (train, lambda f, t: TINY + [
        "--model=keras_applications:ResNet9000", "--image_size=32", f"--output_dir={t}/o"],
                                                   "keras.applications has no 'ResNet9000'"),
    "train: unknown model source": (train, lambda f, t: TINY + [
        "--model=torchvision:resnet18", f"--output_dir={t}/o"], "--model='torchvision:resnet18'"),
    "train: Keras DataParallel on TensorFlow": (train, lambda f, t: TINY + [
        "--strategy=data_parallel", "--engine=keras", f"--output_dir={t}/o"],
                                                "--strategy=data_parallel"),
    "train: tf.distribute strategy with the Keras engine": (train, lambda f, t: TINY + [
        "--strategy=tpu", "--engine=keras", f"--output_dir={t}/o"], "--strategy=tpu"),
    "train: resume with another network": (train, lambda f, t: TINY + [
        "--depth=16", f"--output_dir={_copy(f, t)}"], "holds a run with other flags"),
    "train: missing CIFAR-100-C folder": (train, lambda f, t: TINY + [
        "--corruptions=cifar100_c", "--corruptions_dir=/no/such", f"--output_dir={t}/o"],
                                          "--corruptions_dir='/no/such'"),
    "train: missing OOD folder": (train, lambda f, t: TINY + [
        "--ood=folder:/no/such", f"--output_dir={t}/o"], "'/no/such' is not an existing"),
    "train: malformed decay epochs": (train, lambda f, t: TINY + [
        "--lr_decay_epochs=a,b", f"--output_dir={t}/o"], "--lr_decay_epochs='a,b'"),
    "train: unknown precision": (train, lambda f, t: TINY + [
        "--precision=float8", f"--output_dir={t}/o"], "--precision='float8'"),
    "train: --data_in_memory typo": (train, lambda f, t: TINY + [
        "--data_in_memory=maybe", f"--output_dir={t}/o"], "--data_in_memory='maybe'"),
    "train: corruptions_dir without corruptions": (train, lambda f, t: TINY + [
        f"--corruptions_dir={t}", f"--output_dir={t}/o"], "--corruptions=none"),
    "train: unprepared TFDS dataset offline": (train, lambda f, t: TINY + [
        "--dataset=cifar10", f"--data_dir={t}/tfds", f"--output_dir={t}/o"],
                                               "TFDS dataset 'cifar10' is not prepared"),
    "evaluate: no path": (evaluate, lambda f, t: [], "usage: python -m mixmo_tf.evaluate"),
    "evaluate: missing folder": (evaluate, lambda f, t: ["/no/such/run"],
                                 "'/no/such/run' is neither"),
    "evaluate: a folder that is no run": (evaluate, lambda f, t: [str(f / "foreign")],
                                          "is not a run folder"),
    "evaluate: corrupt config.json": (evaluate, lambda f, t: [str(_copy(f, t, lambda d: (
        d / "config.json").write_text("{not json")))], "config.json is unreadable"),
    "evaluate: corrupt model.keras": (evaluate, lambda f, t: [str(_copy(f, t, lambda d: (
        d / "model.keras").write_bytes(b"garbage")))], "is not a .keras (zip) archive"),
    "evaluate: missing data_info.json": (evaluate, lambda f, t: [str(_copy(f, t, lambda d: (
        d / "data_info.json").unlink()))], "data_info.json is missing"),
    "evaluate: empty OOD folder": (evaluate, lambda f, t: [
        str(f / "run"), f"--ood=folder:{_empty(t)}", f"--output_dir={t}/e"], "contains no images"),
    "evaluate: OOD set listed twice": (evaluate, lambda f, t: [
        str(f / "run"), f"--ood=folder:{t},folder:{t}", f"--output_dir={t}/e"], "lists"),
    "tables: missing folder": (tables, lambda f, t: ["/no/such/run"], "is not a run folder"),
    "tables: an unfinished run": (tables, lambda f, t: [str(_copy(f, t, lambda d: (
        d / "results.json").unlink()))], "is unfinished: results.json missing"),
    "tables: corrupt results.json": (tables, lambda f, t: [str(_copy(f, t, lambda d: (
        d / "results.json").write_text("[1, 2")))], "results.json is unreadable"),
    "evaluate: a run still training": (evaluate, lambda f, t: [str(_held(_copy(f, t)))],
                                       "is still training"),
    "export: a run still training": (export, lambda f, t: [
        f"--run_dir={_held(_copy(f, t))}", f"--export_dir={t}/x"], "is still training"),
    "export: unknown format": (export, lambda f, t: [
        f"--run_dir={f / 'run'}", "--format=tensorrt", f"--export_dir={t}/x"],
                               "--format=tensorrt is not valid"),
    "export: a folder that is no run": (export, lambda f, t: [
        f"--run_dir={f / 'foreign'}", f"--export_dir={t}/x"], "is not a run folder"),
    "ensemble: no runs": (ensemble, lambda f, t: TINY + ["--num_runs=0", f"--output_dir={t}/o"],
                          "--num_runs=0"),
    "ensemble: seeds beyond int32": (ensemble, lambda f, t: TINY + [
        "--seed=2147483647", "--num_runs=2", f"--output_dir={t}/o"], "the last run's seed"),
}


_HELD = []  # Locks held for the rest of the session, as a training process would.


def _held(folder):
  """`folder` with its run lock taken, as while a run trains in it."""
  from mixmo_tf.run_folder.lock import RunLock
  _HELD.append(RunLock(str(folder)))
  return folder


def _empty(tmp_path):
  folder = tmp_path / "empty"
  (folder / "train").mkdir(parents=True, exist_ok=True)
  (folder / "test").mkdir(parents=True, exist_ok=True)
  return folder


def _call(module, argv, capsys):
  if module is tables:
    status = tables.main(argv)
  else:
    status = commands.call(module, argv)
  return status, capsys.readouterr().err


@pytest.mark.parametrize("name", list(ROWS))
def test_every_bad_input_gets_one_line(name, finished, tmp_path, capsys):
  module, argv, expected = ROWS[name]
  with offline():
    status, err = _call(module, argv(finished, tmp_path), capsys)
  errors = [line for line in err.splitlines() if line.startswith("error: ")]
  assert status == 1, (name, status, err[-2000:])
  assert len(errors) == 1 and expected in errors[0], (name, err)
  assert "Traceback" not in err, (name, err[-2000:])
  assert not (tmp_path / "o").exists()  # A refused start leaves no output folder.


def test_flag_parse_errors_are_absl_s_one_line(capsys):
  assert commands.call(train, ["--epochs=many"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "--epochs" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, expected", [
    (["-m", "mixmo_tf.train", "--dataset=imagenet3", "--output_dir=/tmp/never"], "--dataset"),
    (["-m", "mixmo_tf.evaluate", "/no/such/run"], "/no/such/run"),
    (["-m", "mixmo_tf.tables", "/no/such/run"], "/no/such/run"),
    (["-m", "mixmo_tf.export", "--run_dir=/no/such/run"], "/no/such/run"),
    (["-m", "baselines.ensemble", "--num_runs=0", "--output_dir=/tmp/never"], "--num_runs"),
])
def test_each_command_s_top_level_handler_prints_one_line(argv, expected):
  out = run_python(argv, check=False, timeout=300)
  errors = [line for line in out.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and expected in errors[0], out[-2000:]
  assert "Traceback" not in out, out[-2000:]
  assert not os.path.exists("/tmp/never")


FLAG_VALUES = {
    "dataset": st.sampled_from(["digits", "folder", "cifar10", "imagenet", "mnist", ""]),
    "num_members": st.integers(-1, 4), "batch_repetitions": st.integers(-1, 5),
    "batch_size": st.integers(-8, 130), "epochs": st.integers(-1, 3),
    "mixing": st.sampled_from(["cutmix", "linear", "mimo", "fmix", "cut"]),
    "alpha": st.floats(-1, 3, allow_nan=False), "weight_root": st.floats(-1, 4, allow_nan=False),
    "patch_probability": st.floats(-0.5, 1.5, allow_nan=False),
    "seed": st.integers(-3, 2**31 + 3), "depth": st.integers(0, 30), "width": st.integers(-1, 3),
    "engine": st.sampled_from(["auto", "custom", "keras", "jax"]),
    "strategy": st.sampled_from(["auto", "mirrored", "data_parallel", "one_device", "gpu"]),
    "precision": st.sampled_from(["auto", "float32", "mixed_bfloat16", "float8"]),
    "lr_decay_epochs": st.sampled_from(["1", "2,1", "3,4", "x", ""]),
    "model": st.sampled_from(["wide_resnet", "preact_resnet18", "keras_applications:ResNet50",
                              "vgg", "file:"]),
    "msda": st.sampled_from(["none", "mixup", "cutmix", "fmix"]),
    "data_in_memory": st.sampled_from(["auto", "true", "no"]),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({}, optional=FLAG_VALUES))
def test_drawn_flag_sets_are_accepted_or_refused_naming_a_flag(tmp_path_factory, drawn):
  """Parsing (absl), `Config.validate` and `engines.resolve`, what the driver does before it
  touches a folder: every drawn set is accepted or refused with a ValueError naming a flag of
  the set, and no output folder exists afterwards."""
  from absl import flags

  from mixmo_tf.config import config_from_flags, define_flags
  from mixmo_tf.training import engines
  out = tmp_path_factory.mktemp("drawn") / "run"
  values = flags.FlagValues()
  define_flags(values)
  argv = ["train", f"--output_dir={out}"] + [f"--{k}={v}" for k, v in drawn.items()]
  try:
    values(argv)
    config = engines.resolve(config_from_flags(values).validate(), "tensorflow")
  except flags.Error:
    pass  # absl refused a value of the wrong type: one line, status 2 (tested above).
  except ValueError as error:
    named = [f"--{k}" for k in drawn] + ["--data_dir", "--output_dir"]
    assert any(flag in str(error) for flag in named), (drawn, str(error))
  else:
    assert config.engine in ("custom", "keras") and config.strategy != "auto"
  assert not out.exists()


def _crafted_models(folder):
  """Model files that would run code if loaded unsafely: a Python lambda (writing a marker file
  when called), a wrapped backbone holding that lambda, and a layer naming `os.system`."""
  import zipfile

  import keras

  from mixmo_tf.models import from_backbone
  marker = folder / "code_ran"
  path = str(marker)  # A str constant in the lambda's code (Keras serialises its bytecode).
  run_code = lambda x: (open(path, "w").write("ran"), x)[1]  # noqa: E731
  images = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, padding="same")(images)
  backbone = keras.Model(images, keras.layers.Lambda(run_code)(x))
  files = {"lambda": folder / "lambda.keras", "backbone": folder / "backbone.keras",
           "module": folder / "module.keras"}
  keras.Model(images, keras.layers.Lambda(run_code)(images)).save(files["lambda"])
  from_backbone(backbone, 2, 10).save(files["backbone"])
  with zipfile.ZipFile(files["lambda"]) as source:
    config = json.loads(source.read("config.json"))
    config["config"]["layers"][1].update(module="os", class_name="system",
                                          config={"command": f"touch {marker}"})
    with zipfile.ZipFile(files["module"], "w") as target:
      for item in source.infolist():
        data = source.read(item.filename)
        target.writestr(item, json.dumps(config) if item.filename == "config.json" else data)
  marker.unlink()  # Building the models above called the lambda: start clean.
  return files, marker


@pytest.mark.parametrize("kind", ["lambda", "backbone", "module"])
def test_crafted_model_files_are_refused_without_running_their_code(kind, finished, tmp_path,
                                                                    capsys):
  """evaluate, export and baselines.ensemble load a run's model.keras, and `--model=file:` a
  backbone, in Keras' safe mode: a crafted file is refused in one line naming it, and its code never runs (docs/method.md §20:
  threat model)."""
  files, marker = _crafted_models(tmp_path)
  run = _copy(finished, tmp_path)
  shutil.copy(files[kind], run / "model.keras")
  status, err = _call(evaluate, [str(run), f"--output_dir={tmp_path}/e"], capsys)
  assert status == 1 and f"Cannot load {run / 'model.keras'}" in err, err[-2000:]
  status, err = _call(export, [f"--run_dir={run}", f"--export_dir={tmp_path}/x",
                               "--format=saved_model"], capsys)
  assert status == 1 and f"Cannot load {run / 'model.keras'}" in err, err[-2000:]
  assert not (tmp_path / "x").exists()
  ensemble_dir = tmp_path / "de"
  shutil.copytree(run, ensemble_dir / "run_0")
  status, err = _call(ensemble, TINY + ["--num_runs=1", f"--output_dir={ensemble_dir}"], capsys)
  assert status == 1 and "Cannot load" in err and "run_0" in err, err[-2000:]
  status, err = _call(train, TINY + [f"--model=file:{files[kind]}", "--image_size=8",
                                     f"--output_dir={tmp_path}/o"], capsys)
  assert status == 1 and f"cannot load {files[kind]}" in err, err[-2000:]
  assert not marker.exists()
