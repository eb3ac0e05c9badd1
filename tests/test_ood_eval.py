"""OOD detection in the evaluation tools (docs/method.md §17): --ood sets read, predicted, scored,
written (metrics.json, ood_table.md, plots), pooled over ensembles, tabulated, and clear errors."""

import json
import os
import re
import shutil
from types import SimpleNamespace
from unittest import mock

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from baselines.ensemble import run_ensemble
from mixmo_tf import commands, evaluate, tables, training
from mixmo_tf.data import datasets, ood_sets
from mixmo_tf.evaluation import metrics, ood
from mixmo_tf.evaluation import runs as eval_runs
from mixmo_tf.evaluation.predict import load_predictor, predict_batches
from mixmo_tf.run_folder import RunFolder
from tests.helpers import offline, tiny_config

ALL_SCORES = ["msp", "entropy", "mutual_information", "disagreement"]
METRICS = {"auroc", "aupr_in", "aupr_out", "fpr95"}


def _write_png(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8), mode).save(path)


def _noise_images(seed=0):
  """{relative path: (pixels, PIL mode)} of `_noise_folder`, in the order an OOD folder lists
  them: root/test's own files first, then its subfolders, sorted, depth first."""
  rng = np.random.default_rng(seed)
  a0, a1 = rng.integers(0, 256, (12, 12, 3)), rng.integers(0, 256, (8, 8))
  b2, loose = rng.integers(0, 256, (8, 8, 4)), rng.integers(0, 256, (5, 9, 3))
  return {"3.png": (loose, None), "a/0.png": (a0, None), "a/1.png": (a1, "L"),
          "b/deeper/2.png": (b2, "RGBA")}


def _noise_folder(root, seed=0):
  """A few PNGs of mixed sizes and modes, in class folders and loose, under root/test; a broken
  file under root/train shows that only root/test is read."""
  for relative, (pixels, mode) in _noise_images(seed).items():
    _write_png(root / "test" / relative, pixels, mode)
  os.makedirs(root / "train")
  (root / "train" / "broken.png").write_bytes(b"not an image")
  return f"folder:{root}"


def _sklearn_auroc(in_scores, out_scores):
  labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]  # OOD positive.
  return roc_auc_score(labels, np.r_[in_scores, out_scores])


def _error_line(err):
  """The one `error: ...` line a command printed on stderr, its last line (log lines may come
  before it)."""
  lines = err.strip().splitlines()
  assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err
  return lines[-1]


def _test_logits(run_dir):
  """(member logits, labels) of a run's test set through the one prediction path."""
  predictor, folder = load_predictor(str(run_dir))
  return predict_batches(predictor, datasets.load(folder.read_config()).test)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Two trained digits runs (one epoch each): Cut-MixMo M = 2, trained with `--ood` on a noise
  folder (`train_set`), and vanilla M = 1."""
  root = tmp_path_factory.mktemp("ood_runs")
  train_set = _noise_folder(root / "train_noise", seed=5)
  training.run(tiny_config(root / "mixmo", epochs=1, lr_decay_epochs=(), ood=(train_set,)))
  training.run(tiny_config(root / "vanilla", epochs=1, lr_decay_epochs=(), num_members=1,
                           batch_repetitions=1, mixing="linear"))
  return SimpleNamespace(mixmo=root / "mixmo", vanilla=root / "vanilla", train_set=train_set)


def test_evaluate_ood_folder_writes_metrics_table_and_plots(trained, tmp_path):
  name = _noise_folder(tmp_path / "noise")
  out = tmp_path / "eval"
  results = eval_runs.evaluate_run(str(trained.mixmo), output_dir=str(out), plots=True,
                                   ood_names=(name,))
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["ood"] == results["ood"] and list(saved["ood"]) == [name]
  assert sorted(saved["ood"][name]) == sorted(ALL_SCORES)
  for score in ALL_SCORES:
    assert set(saved["ood"][name][score]) == METRICS
    assert all(0.0 <= v <= 1.0 for v in saved["ood"][name][score].values())
  table = (out / "ood_table.md").read_text().splitlines()
  assert len(table) == 2 + len(ALL_SCORES) and all(name in row for row in table[2:])
  for score in ALL_SCORES:
    with Image.open(out / f"ood_folder_noise_hist_{score}.png") as image:
      assert image.size == (600, 400)
  assert (out / "ood_folder_noise_roc.png").exists()
  assert saved["top1"] == results["top1"]  # The in-distribution metrics are kept beside.
  assert not (trained.mixmo / "metrics.json").exists()  # Everything went to --output_dir.


def test_ood_set_is_resized_rgb_uint8_without_labels(tmp_path):
  name = _noise_folder(tmp_path / "noise")
  examples = ood_sets.ood_set(name, None, (8, 8, 3))
  assert isinstance(examples, datasets.InMemory)
  assert examples.images.shape == (4, 8, 8, 3) and examples.images.dtype == np.uint8
  assert examples.labels.dtype == np.int32
  assert set(examples.labels) == {ood_sets.FOLDER_LABEL}
  originals = [pixels for pixels, _ in _noise_images().values()]  # In listing order.
  # 8x8 files keep their pixels: grey tiled to RGB, RGBA without its alpha.
  np.testing.assert_array_equal(examples.images[2], np.repeat(originals[2][..., None], 3, -1))
  np.testing.assert_array_equal(examples.images[3], originals[3][..., :3])
  # Other sizes follow the one resize rule (bilinear, half-pixel centres, rounded).
  from mixmo_tf.data.images import resize
  for i in (0, 1):
    expected = resize(originals[i][None].astype(np.uint8), 8)[0]
    np.testing.assert_array_equal(examples.images[i], expected)
  flat_name = f"folder:{tmp_path / 'noise' / 'test' / 'a'}"
  assert ood_sets.folder_root(flat_name) == str(tmp_path / "noise" / "test" / "a")
  assert ood_sets.folder_root(name) == str(tmp_path / "noise" / "test")
  flat = ood_sets.ood_set(flat_name, None, (8, 8, 3))  # No test/ subfolder: PATH itself.
  np.testing.assert_array_equal(flat.images, examples.images[1:3])


def test_file_stems_are_safe_and_unique():
  stems = ood_sets.file_stems(["folder:/data/x/noise", "folder:/other/noise/", "svhn_cropped",
                               "folder:/a b/c&d"])
  assert stems == {"folder:/data/x/noise": "folder_noise", "folder:/other/noise/": "folder_noise_2",
                   "svhn_cropped": "svhn_cropped", "folder:/a b/c&d": "folder_c_d"}


def test_test_set_against_itself_gives_auroc_one_half(trained, tmp_path):
  predictor, folder = load_predictor(str(trained.mixmo))
  test = datasets.load(folder.read_config()).test
  in_logits, labels = predict_batches(predictor, test)
  for i, image in enumerate(test.images):  # Names keep the test order.
    _write_png(tmp_path / "self" / f"{i:04d}.png", image)
  name = f"folder:{tmp_path / 'self'}"
  sets = ood_sets.ood_sets([name], None, folder.read_data_info().image_shape)
  np.testing.assert_array_equal(sets[name].images, test.images)  # Lossless PNGs.
  out_logits = eval_runs.ood_logits(predictor, sets)[name]
  np.testing.assert_array_equal(out_logits, in_logits)  # Same images, same batches.
  results = eval_runs.evaluate_run(str(trained.mixmo), output_dir=str(tmp_path / "eval"),
                                   ood_names=(name,))
  assert results["top1"] == pytest.approx(metrics.evaluate_logits(in_logits, labels)["top1"])
  in_scores = ood.uncertainty_scores(in_logits)
  out_scores = ood.uncertainty_scores(out_logits)
  assert sorted(results["ood"][name]) == sorted(ALL_SCORES)
  for score in ALL_SCORES:  # Identical sets: every in-score has an equal out-score (ties = 1/2).
    assert results["ood"][name][score]["auroc"] == pytest.approx(0.5, abs=1e-12), score
    assert results["ood"][name][score]["auroc"] == pytest.approx(
        _sklearn_auroc(in_scores[score], out_scores[score]), abs=1e-12), score
  assert len(labels) == len(out_logits)


def test_vanilla_command_gives_msp_and_entropy_only(trained, tmp_path, capsys):
  name = _noise_folder(tmp_path / "noise")
  out = tmp_path / "eval"
  status = commands.call(evaluate, [str(trained.vanilla), f"--ood={name}", f"--output_dir={out}"])
  printed = capsys.readouterr()
  assert status == 0, printed.err[-3000:]
  saved = json.loads((out / "metrics.json").read_text())
  assert sorted(saved["ood"][name]) == ["entropy", "msp"]
  assert printed.out.startswith(f"| vanilla | {100 * saved['top1']:.2f} |")
  assert f"| {name} | entropy |" in printed.out and "AUROC" in printed.out
  assert f"{100 * saved['ood'][name]['msp']['auroc']:.2f}" in printed.out
  # A set listed twice: one line on stderr, exit status 1, nothing evaluated.
  status = commands.call(evaluate, [str(trained.vanilla), f"--ood={name},{name}",
                                    f"--output_dir={tmp_path / 'twice'}"])
  assert status == 1 and _error_line(capsys.readouterr().err).startswith("error: --ood lists")
  assert not (tmp_path / "twice").exists()


def test_ensemble_pools_members_and_tables_compare_runs(trained, tmp_path, capsys):
  name = _noise_folder(tmp_path / "noise")
  ens = tmp_path / "de"
  for i, run in enumerate((trained.mixmo, trained.vanilla)):  # Trained: only evaluated here.
    shutil.copytree(run, ens / f"run_{i}")
  with mock.patch.object(training, "run", lambda *a, **k: pytest.fail("a finished run trained")):
    results = run_ensemble(tiny_config(ens, ood=(name,)), num_runs=2, combine="logits")
  got = results["ensemble"]["ood"][name]
  assert sorted(got) == sorted(ALL_SCORES)  # 2 + 1 pooled members.
  pooled = {"in": [], "out": []}
  for i in range(2):
    predictor, folder = load_predictor(str(ens / f"run_{i}"))
    pooled["in"].append(predict_batches(predictor, datasets.load(folder.read_config()).test)[0])
    pooled["out"].append(predict_batches(predictor, ood_sets.ood_set(
        name, None, folder.read_data_info().image_shape))[0])
  pooled = {part: np.concatenate(logits, axis=1) for part, logits in pooled.items()}
  assert pooled["in"].shape[1] == pooled["out"].shape[1] == 3
  expected = ood.evaluate_ood(pooled["in"], pooled["out"])
  for score in ALL_SCORES:
    assert got[score] == pytest.approx(expected[score], abs=1e-12), score
  saved = json.loads((ens / "ensemble_results.json").read_text())
  assert saved["ensemble"]["ood"] == {name: got}
  assert (ens / "ood_table.md").read_text().count(name) == len(ALL_SCORES)
  capsys.readouterr()
  # The vanilla run holds no OOD results yet: one line on stderr, exit status 1.
  assert tables.main([str(ens / "run_1"), "--ood"]) == 1
  assert _error_line(capsys.readouterr().err).startswith("error: --ood: no run holds OOD results")
  eval_runs.evaluate_run(str(ens / "run_1"), ood_names=(name,))  # Vanilla: its metrics.json.
  assert tables.main([str(ens), str(ens / "run_0"), str(ens / "run_1"), "--ood"]) == 0
  printed = capsys.readouterr().out
  rows = [r for r in printed.splitlines() if name in r]
  assert len(rows) == len(ALL_SCORES) + 2  # The ensemble's 4 scores, run_1's 2.
  assert sum(r.startswith("| de |") for r in rows) == 4
  assert sum(r.startswith("| run_1 |") for r in rows) == 2
  # run_0 was trained with --ood: its results.json's OOD results are tabulated too.
  trained_rows = [r for r in printed.splitlines() if trained.train_set in r]
  assert len(trained_rows) == 4 and all(r.startswith("| run_0 |") for r in trained_rows)


# ------------------------------------------------------------------------------------------------
# Errors.


def test_unreadable_image_is_named(tmp_path):
  _write_png(tmp_path / "set" / "good.png", np.zeros((8, 8, 3)))
  (tmp_path / "set" / "bad.png").write_bytes(b"\x89PNG but truncated")
  bad = re.escape(str(tmp_path / "set" / "bad.png"))
  with pytest.raises(ValueError, match=f"Cannot decode image {bad}"):
    ood_sets.ood_set(f"folder:{tmp_path / 'set'}", None, (8, 8, 3))


def test_empty_or_missing_folder_is_named(tmp_path):
  (tmp_path / "empty" / "test" / "class_a").mkdir(parents=True)
  (tmp_path / "empty" / "test" / "notes.txt").write_text("no images here")
  empty = re.escape(str(tmp_path / "empty" / "test"))
  with pytest.raises(ValueError, match=f"OOD folder {empty} contains no images"):
    ood_sets.ood_set(f"folder:{tmp_path / 'empty'}", None, (8, 8, 3))
  with pytest.raises(ValueError, match="'/nonexistent/ood' is not an existing directory"):
    ood_sets.ood_set("folder:/nonexistent/ood", None, (8, 8, 3))
  with pytest.raises(ValueError, match="lists 'svhn_cropped' 2 times"):
    ood_sets.ood_sets(["svhn_cropped", " svhn_cropped"], None, (8, 8, 3))
  assert ood_sets.check_names([" a", "", "folder:/b "]) == ("a", "folder:/b")
  with pytest.raises(ValueError, match="'no_such_set' is neither a TFDS dataset nor folder:PATH"):
    ood_sets.ood_set("no_such_set", str(tmp_path), (8, 8, 3))
  with pytest.raises(ValueError, match=r"square RGB model input.*\(8, 6, 3\)"):
    ood_sets.ood_set(f"folder:{tmp_path / 'empty'}", None, (8, 6, 3))


def test_unprepared_tfds_set_is_the_offline_error(tmp_path):
  data_dir = str(tmp_path / "tfds")
  with offline(), pytest.raises(datasets.DatasetUnavailableError) as error:
    ood_sets.ood_set("svhn_cropped", data_dir, (8, 8, 3))
  message = str(error.value)
  assert message.startswith("--ood='svhn_cropped': TFDS dataset 'svhn_cropped' is not prepared")
  assert f"--ood_data_dir={data_dir}" in message and "ConnectionError" in message
  assert "tfds build svhn_cropped --data_dir=DIR" in message and "--ood=folder:PATH" in message
  assert "--dataset=folder" not in message and len(message.splitlines()) == 2
  assert error.value.__cause__ is None and error.value.__suppress_context__


def test_bad_ood_set_fails_before_anything_is_written(trained, tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="contains no images"):
    eval_runs.evaluate_run(str(trained.mixmo), output_dir=str(tmp_path / "eval"),
                           ood_names=(f"folder:{tmp_path / 'empty'}",))
  assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------------------------
# Real data.


@pytest.mark.slow
def test_real_cifar10_test_set_against_itself(cifar10_folder, tmp_path):
  config = tiny_config(tmp_path / "run", dataset="folder", data_dir=str(cifar10_folder),
                       train_subset=2000, epochs=1, lr_decay_epochs=(), batch_size=64,
                       eval_frequency=100)
  training.run(config)
  predictor, folder = load_predictor(str(tmp_path / "run"))
  in_logits, _ = predict_batches(predictor, datasets.load(config).test)
  name = f"folder:{cifar10_folder}"  # Its test/ split: the same 10,000 images.
  out_logits = eval_runs.ood_logits(predictor, ood_sets.ood_sets(
      [name], None, folder.read_data_info().image_shape))[name]
  results = ood.evaluate_ood(in_logits, out_logits)
  assert len(in_logits) == len(out_logits) == 10_000
  in_scores, out_scores = ood.uncertainty_scores(in_logits), ood.uncertainty_scores(out_logits)
  assert sorted(results) == sorted(ALL_SCORES)
  for score in ALL_SCORES:
    assert abs(results[score]["auroc"] - 0.5) <= 0.02, (score, results[score])
    assert results[score]["auroc"] == pytest.approx(
        _sklearn_auroc(in_scores[score], out_scores[score]), abs=1e-12), score


def test_train_ood_scores_at_the_end_and_matches_evaluate(trained, tmp_path):
  """`train --ood`: the sets are read before training (a bad one fails first) and scored at the
  end against the final test logits; the same figures as `evaluate --ood` on the finished run."""
  results = RunFolder.open(str(trained.mixmo)).read_results()
  scores = results["ood"][trained.train_set]
  assert set(scores) == set(ALL_SCORES)
  again = eval_runs.evaluate_run(str(trained.mixmo), output_dir=str(tmp_path / "eval"),
                                 ood_names=(trained.train_set,))["ood"][trained.train_set]
  for score, values in scores.items():
    assert set(values) == METRICS
    for metric in METRICS:
      assert values[metric] == pytest.approx(again[score][metric], abs=1e-6), (score, metric)
  # The same figures from the evaluated logits, by hand.
  in_logits, _ = _test_logits(trained.mixmo)
  predictor, folder = load_predictor(str(trained.mixmo))
  out_logits = predict_batches(predictor, ood_sets.ood_set(
      trained.train_set, None, folder.read_data_info().image_shape))[0]
  expected = ood.evaluate_ood(in_logits, out_logits)
  for score in ALL_SCORES:
    assert again[score] == pytest.approx(expected[score], abs=1e-12), score

  def no_layer(self, *args, **kwargs):  # A bad set stops the run before any model is built.
    raise AssertionError(f"a Keras layer was built: {type(self).__name__}")

  missing = re.escape(repr(str(tmp_path / "missing")))
  for _ in range(2):  # The folder's lock is released: the second try fails the same way.
    with mock.patch.object(keras.layers.Layer, "__init__", no_layer), \
        pytest.raises(ValueError, match=f"{missing} is not an existing directory"):
      training.run(tiny_config(tmp_path / "bad", max_steps=3,
                               ood=(f"folder:{tmp_path / 'missing'}",)))
  assert not RunFolder(str(tmp_path / "bad")).is_complete()
  assert RunFolder(str(tmp_path / "bad")).latest_checkpoint() is None
