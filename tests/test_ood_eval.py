"""OOD detection in the evaluation tools (docs/method.md §17): --ood sets read, predicted, scored,
written (metrics.json, ood_table.md, plots), pooled over ensembles, tabulated, and clear errors."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from baselines.ensemble import run_ensemble
from mixmo_tf import data as data_lib
from mixmo_tf import custom_loop, evaluate, ood, ood_data, tables, tfds_data, train
from mixmo_tf.config import Config
from mixmo_tf.predict import load_predictor, predict_dataset
from tests.conftest import REPO
from tests.helpers import offline, tiny_config

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
ALL_SCORES = ["msp", "entropy", "mutual_information", "disagreement"]
METRICS = {"auroc", "aupr_in", "aupr_out", "fpr95"}


def _write_png(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8), mode).save(path)


def _noise_folder(root, seed=0):
  """A few PNGs of mixed sizes and modes, in class folders and loose, under root/test; a broken
  file under root/train shows that only root/test is read."""
  rng = np.random.default_rng(seed)
  _write_png(root / "test" / "a" / "0.png", rng.integers(0, 256, (12, 12, 3)))
  _write_png(root / "test" / "a" / "1.png", rng.integers(0, 256, (8, 8)), "L")
  _write_png(root / "test" / "b" / "deeper" / "2.png", rng.integers(0, 256, (8, 8, 4)), "RGBA")
  _write_png(root / "test" / "3.png", rng.integers(0, 256, (5, 9, 3)))
  os.makedirs(root / "train")
  (root / "train" / "broken.png").write_bytes(b"not an image")
  return f"folder:{root}"


def _sklearn_auroc(in_scores, out_scores):
  labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]  # OOD positive.
  return roc_auc_score(labels, np.r_[in_scores, out_scores])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two trained digits runs: Cut-MixMo M = 2 and vanilla M = 1 (one epoch each)."""
  root = tmp_path_factory.mktemp("ood_runs")
  train.run(tiny_config(root / "mixmo", epochs=1, lr_decay_epochs=()))
  train.run(tiny_config(root / "vanilla", epochs=1, lr_decay_epochs=(), num_members=1,
                        batch_repetitions=1, mixing="linear"))
  return root / "mixmo", root / "vanilla"


def test_evaluate_ood_folder_writes_metrics_table_and_plots(runs, tmp_path):
  name = _noise_folder(tmp_path / "noise")
  out = tmp_path / "eval"
  results = evaluate.evaluate_path(str(runs[0]), output_dir=str(out), plots=True, ood=(name,))
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


def test_ood_set_is_resized_rgb_uint8_without_labels(tmp_path):
  ds = ood_data.ood_dataset(_noise_folder(tmp_path / "noise"), None, (8, 8, 3))
  images, labels = zip(*ds.as_numpy_iterator())
  assert len(images) == 4 and all(i.shape == (8, 8, 3) and i.dtype == np.uint8 for i in images)
  assert set(labels) == {ood_data.FOLDER_LABEL}
  flat = ood_data.ood_dataset(f"folder:{tmp_path / 'noise' / 'test' / 'a'}", None, (8, 8, 3))
  assert len(list(flat)) == 2  # No test/ subfolder: PATH itself.


def test_test_set_against_itself_gives_auroc_one_half(runs, tmp_path):
  predictor, info, config = load_predictor(str(runs[0]))
  _, test, _ = data_lib.load(Config.from_dict(config))
  in_logits, labels = predict_dataset(predictor, test)
  for i, (image, _) in enumerate(test.as_numpy_iterator()):  # Names keep the test order.
    _write_png(tmp_path / "self" / f"{i:04d}.png", image)
  name = f"folder:{tmp_path / 'self'}"
  out_logits = ood_data.ood_logits(predictor, ood_data.ood_datasets([name], None,
                                                                    info.image_shape))[name]
  np.testing.assert_array_equal(out_logits, in_logits)  # Lossless PNGs, same batches.
  results = ood_data.ood_results(predictor, [name], None, info.image_shape, in_logits)
  in_scores = ood.uncertainty_scores(in_logits)
  out_scores = ood.uncertainty_scores(out_logits)
  assert sorted(results[name]) == sorted(ALL_SCORES)
  for score in ALL_SCORES:  # Identical sets: every in-score has an equal out-score (ties = 1/2).
    assert results[name][score]["auroc"] == pytest.approx(0.5, abs=1e-12), score
    assert results[name][score]["auroc"] == pytest.approx(
        _sklearn_auroc(in_scores[score], out_scores[score]), abs=1e-12), score
  assert len(labels) == len(out_logits)


def test_vanilla_cli_gives_msp_and_entropy_only(runs, tmp_path):
  name = _noise_folder(tmp_path / "noise")
  out = tmp_path / "eval"
  proc = subprocess.run([sys.executable, "-m", "mixmo_tf.evaluate", str(runs[1]),
                         f"--ood={name}", f"--output_dir={out}"],
                        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = json.loads((out / "metrics.json").read_text())
  assert sorted(saved["ood"][name]) == ["entropy", "msp"]
  assert f"| {name} | entropy |" in proc.stdout and "AUROC" in proc.stdout


def test_ensemble_pools_members_and_tables_compare_runs(runs, tmp_path, capsys):
  name = _noise_folder(tmp_path / "noise")
  ens = tmp_path / "de"
  for i, run in enumerate(runs):  # Trained already: run_ensemble only evaluates them.
    shutil.copytree(run, ens / f"run_{i}")
  results = run_ensemble(tiny_config(ens, ood=(name,)), num_runs=2, combine="logits")
  got = results["ensemble"]["ood"][name]
  assert sorted(got) == sorted(ALL_SCORES)  # 2 + 1 pooled members.
  pooled = {}
  for part in ("in", "out"):
    logits = []
    for i in range(2):
      predictor, info, config = load_predictor(str(ens / f"run_{i}"))
      ds = (data_lib.load(Config.from_dict(config))[1] if part == "in" else
            ood_data.ood_dataset(name, None, info.image_shape))
      logits.append(predict_dataset(predictor, ds)[0])
    pooled[part] = np.concatenate(logits, axis=1)
  expected = ood.evaluate_ood(pooled["in"], pooled["out"])
  for score in ALL_SCORES:
    assert got[score] == pytest.approx(expected[score], abs=1e-12), score
  saved = json.loads((ens / "ensemble_results.json").read_text())
  assert saved["ensemble"]["ood"] == {name: got}
  assert (ens / "ood_table.md").read_text().count(name) == len(ALL_SCORES)
  evaluate.evaluate_path(str(ens / "run_1"), ood=(name,))  # Vanilla: its metrics.json.
  capsys.readouterr()
  tables.main([str(ens), str(ens / "run_0"), str(ens / "run_1"), "--ood"])
  printed = capsys.readouterr().out
  rows = [r for r in printed.splitlines() if name in r]
  assert len(rows) == len(ALL_SCORES) + 2  # The ensemble's 4 scores, run_1's 2; run_0 has none.
  assert sum(r.startswith("| de |") for r in rows) == 4
  assert sum(r.startswith("| run_1 |") for r in rows) == 2
  with pytest.raises(SystemExit, match="no run holds OOD results"):
    tables.main([str(ens / "run_0"), "--ood"])


# ------------------------------------------------------------------------------------------------
# Errors.


def test_unreadable_image_is_named(tmp_path):
  _write_png(tmp_path / "set" / "good.png", np.zeros((8, 8, 3)))
  (tmp_path / "set" / "bad.png").write_bytes(b"\x89PNG but truncated")
  bad = re.escape(str(tmp_path / "set" / "bad.png"))
  with pytest.raises(ValueError, match=f"Cannot decode image {bad}"):
    ood_data.ood_dataset(f"folder:{tmp_path / 'set'}", None, (8, 8, 3))


def test_empty_or_missing_folder_is_named(tmp_path):
  (tmp_path / "empty" / "test" / "class_a").mkdir(parents=True)
  (tmp_path / "empty" / "test" / "notes.txt").write_text("no images here")
  empty = re.escape(str(tmp_path / "empty" / "test"))
  with pytest.raises(ValueError, match=f"OOD folder {empty} contains no images"):
    ood_data.ood_dataset(f"folder:{tmp_path / 'empty'}", None, (8, 8, 3))
  with pytest.raises(ValueError, match="'/nonexistent/ood' is not an existing directory"):
    ood_data.ood_dataset("folder:/nonexistent/ood", None, (8, 8, 3))
  with pytest.raises(ValueError, match="lists 'svhn_cropped' 2 times"):
    ood_data.ood_datasets(["svhn_cropped", " svhn_cropped"], None, (8, 8, 3))
  with pytest.raises(ValueError, match="'no_such_set' is neither a TFDS dataset nor folder:PATH"):
    ood_data.ood_dataset("no_such_set", str(tmp_path), (8, 8, 3))


def test_unprepared_tfds_set_is_the_offline_error(tmp_path):
  data_dir = str(tmp_path / "tfds")
  with offline(), pytest.raises(tfds_data.DatasetUnavailableError) as error:
    ood_data.ood_dataset("svhn_cropped", data_dir, (8, 8, 3))
  message = str(error.value)
  assert message.startswith("--ood='svhn_cropped': TFDS dataset 'svhn_cropped' is not prepared")
  assert f"--ood_data_dir={data_dir}" in message and "ConnectionError" in message
  assert "tfds build svhn_cropped --data_dir=DIR" in message and "--ood=folder:PATH" in message
  assert "--dataset=folder" not in message and len(message.splitlines()) == 2
  assert error.value.__cause__ is None and error.value.__suppress_context__


def test_bad_ood_set_fails_before_anything_is_written(runs, tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="contains no images"):
    evaluate.evaluate_path(str(runs[0]), output_dir=str(tmp_path / "eval"),
                           ood=(f"folder:{tmp_path / 'empty'}",))
  assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------------------------
# Real data.


@pytest.mark.slow
def test_real_cifar10_test_set_against_itself(cifar10_folder, tmp_path):
  config = tiny_config(tmp_path / "run", dataset="folder", data_dir=str(cifar10_folder),
                       train_subset=2000, epochs=1, lr_decay_epochs=(), batch_size=64,
                       eval_frequency=100)
  train.run(config)
  predictor, info, _ = load_predictor(str(tmp_path / "run"))
  in_logits, _ = predict_dataset(predictor, data_lib.load(config)[1])
  name = f"folder:{cifar10_folder}"  # Its test/ split: the same 10,000 images.
  out_logits = ood_data.ood_logits(predictor, ood_data.ood_datasets([name], None,
                                                                    info.image_shape))[name]
  results = ood.evaluate_ood(in_logits, out_logits)
  assert len(in_logits) == len(out_logits) == 10_000
  in_scores, out_scores = ood.uncertainty_scores(in_logits), ood.uncertainty_scores(out_logits)
  assert sorted(results) == sorted(ALL_SCORES)
  for score in ALL_SCORES:
    assert abs(results[score]["auroc"] - 0.5) <= 0.02, (score, results[score])
    assert results[score]["auroc"] == pytest.approx(
        _sklearn_auroc(in_scores[score], out_scores[score]), abs=1e-12), score


def test_train_ood_scores_at_the_end_and_matches_evaluate(tmp_path, monkeypatch):
  """`train --ood`: the sets are read before training (a bad one fails first) and scored at the
  end against the final test logits; the same figures as `evaluate --ood` on the finished run."""
  ood_set = _noise_folder(tmp_path / "noise")
  results = train.run(tiny_config(tmp_path / "run", max_steps=3, ood=(ood_set,)))
  scores = results["ood"][ood_set]
  assert set(scores) == {"msp", "entropy", "mutual_information", "disagreement"}
  again = evaluate.evaluate_path(str(tmp_path / "run"), ood=(ood_set,))["ood"][ood_set]
  for score, values in scores.items():
    for metric in ("auroc", "aupr_in", "aupr_out", "fpr95"):
      assert values[metric] == pytest.approx(again[score][metric], abs=1e-6), (score, metric)
  monkeypatch.setattr(custom_loop.Trainer, "train_epoch", lambda *a: pytest.fail("trained"))
  with pytest.raises(ValueError, match="missing"):
    train.run(tiny_config(tmp_path / "bad", max_steps=3,
                          ood=(f"folder:{tmp_path / 'missing'}",)))
