"""Metrics against independent computations on fixed inputs (docs/method.md §10)."""

import numpy as np
import pytest

from mixmo_tf.evaluation import metrics
from mixmo_tf.evaluation.tables import markdown_table


def numpy_ece(probs, labels, bins=15):
  """A plain loop over bins (l, u], written independently of metrics.py."""
  conf, pred = probs.max(1), probs.argmax(1)
  total = 0.0
  for b in range(bins):
    lo, hi = b / bins, (b + 1) / bins
    sel = (conf > lo) & (conf <= hi) if b else (conf >= 0) & (conf <= hi)
    if sel.sum():
      total += sel.sum() / len(labels) * abs((pred[sel] == labels[sel]).mean() - conf[sel].mean())
  return total


def test_nll_and_ece_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(500, 3, 7)) * 2
  labels = rng.integers(0, 7, 500)
  probs = np.exp(logits.mean(1)) / np.exp(logits.mean(1)).sum(1, keepdims=True)
  np.testing.assert_allclose(metrics.ensemble_probs(logits, "logits"), probs, rtol=1e-12)
  nll = np.mean([-np.log(probs[i, labels[i]] + 1e-12) for i in range(500)])
  assert metrics.nll(probs, labels) == pytest.approx(nll, rel=1e-12)
  assert metrics.expected_calibration_error(probs, labels) == pytest.approx(
      numpy_ece(probs, labels), abs=1e-12)
  member_p = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
  np.testing.assert_allclose(metrics.ensemble_probs(logits, "probs"), member_p.mean(1))


def test_temperature_scaling_recovers_known_temperature():
  rng = np.random.default_rng(1)
  for true_t in (0.5, 2.0, 3.0):
    z = rng.normal(size=(20000, 10)) * 3
    p = np.exp(z / true_t)
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(10, p=row) for row in p])  # labels drawn at temperature T
    assert metrics.fit_temperature(z, labels) == pytest.approx(true_t, rel=0.02)


def test_calibrated_metrics_use_two_fixed_halves():
  a, b = metrics.calibration_split(10)
  order = np.arange(10)
  np.random.RandomState(31).shuffle(order)
  np.testing.assert_array_equal(np.concatenate([a, b]), order)
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(400, 2, 5)) * 4
  labels = rng.integers(0, 5, 400)
  out = metrics.calibrated_metrics(logits, labels)
  assert out["nll_c"] < metrics.nll(metrics.ensemble_probs(logits), labels)  # random logits: T >> 1
  assert out["temperature"] > 1


def test_ratio_error_diversity_hand_count():
  labels = np.zeros(10, int)
  # member a wrong on 0-3, member b wrong on 2-6 -> both wrong {2,3}: 0.2; exactly one: {0,1,4,5,6}: 0.5
  a = np.zeros(10, int); a[:4] = 1
  b = np.zeros(10, int); b[2:7] = 2
  logits = np.stack([np.eye(3)[a], np.eye(3)[b]], axis=1) * 5
  assert metrics.ratio_error_diversity(logits, labels) == pytest.approx(0.5 / 0.2)
  never_both = np.stack([np.eye(3)[a], np.eye(3)[np.r_[np.zeros(5, int), np.ones(5, int)]]], 1)
  # N00 = 0 -> 2 (N01 + N10): a wrong on 0-3, b wrong on 5-9 -> exactly one wrong: 9/10
  assert metrics.ratio_error_diversity(never_both, labels) == pytest.approx(2 * 0.9)


def test_top5_with_ties():
  probs = np.array([[0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],   # label 7 tied at the boundary
                    [0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.04, 0.01],  # label 6: rank 7
                    [0.125] * 8])                                   # all tied
  labels = np.array([7, 6, 3])
  assert metrics.top_k_accuracy(probs, labels, 5) == pytest.approx(2 / 3)
  assert metrics.top_k_accuracy(probs, labels, 1) == pytest.approx(1 / 3)  # all-tied counts


def test_evaluate_logits_and_table():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(50, 2, 10))
  labels = rng.integers(0, 10, 50)
  r = metrics.evaluate_logits(logits, labels)
  assert {"top1", "top5", "nll", "nll_c", "ece", "ece_c", "top1_member_0", "nll_member_1",
          "diversity_dre", "top1_members_mean"} <= set(r)
  table = markdown_table({"a": r, "b": r})
  assert table.count("\n") == 4 and "| a |" in table


def test_tables_tool_reads_every_kind_of_run(tmp_path, capsys):
  import json
  from mixmo_tf import tables
  from mixmo_tf.evaluation import tables as tables_lib
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "metrics.json").write_text(json.dumps({"top1": 0.5, "nll": 1.25}))
  (tmp_path / "a" / "results.json").write_text(json.dumps({"top1": 0.1}))  # metrics.json wins.
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "results.json").write_text(json.dumps({"top1": 0.75, "top5": 0.9}))
  (tmp_path / "de").mkdir()
  (tmp_path / "de" / "ensemble_results.json").write_text(json.dumps({"ensemble": {"top1": 0.8}}))
  assert tables.main([str(tmp_path / n) for n in ("a", "b", "de")]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 5
  assert lines[0] == "| run | " + " | ".join(c[0] for c in tables_lib.TABLE_COLUMNS) + " |"
  assert lines[2] == "| a | 50.00 | - | 1.250 | - | - | - | - |"
  assert lines[3].startswith("| b | 75.00 | 90.00 |") and lines[4].startswith("| de | 80.00 |")
  with pytest.raises(ValueError, match="none of"):
    tables_lib.load_run_metrics(str(tmp_path))
  # An unfinished run (config.json, no results) is named with what it lacks; the command says
  # so in one line on stderr, exit status 1, and prints no table.
  (tmp_path / "busy").mkdir()
  (tmp_path / "busy" / "config.json").write_text("{}")
  with pytest.raises(ValueError, match="unfinished: .*results.json"):
    tables_lib.load_run_metrics(str(tmp_path / "busy"))
  assert tables.main([str(tmp_path / "a"), str(tmp_path / "busy")]) == 1
  out, err = capsys.readouterr()
  assert out == "" and err.startswith("error: ") and "unfinished" in err
  assert len(err.strip().splitlines()) == 1


def test_tables_tool_members_timing_and_curves(tmp_path, capsys):
  """--members lists each member's Top-1, --timing converts seconds to minutes, --curves draws
  one line per run that recorded test_top1_per_epoch (in matplotlib's first two colours)."""
  import json
  from PIL import Image
  from mixmo_tf import tables
  from mixmo_tf.evaluation import tables as tables_lib
  runs = {"van": {"top1": 0.7, "top1_member_0": 0.7, "train_seconds": 90.0,
                  "train_images_per_second": 250.4, "test_top1_per_epoch": [[1, 0.5], [2, 0.7]]},
          "mix": {"top1": 0.8, "top1_member_0": 0.75, "top1_member_1": 0.7625,
                  "diversity_dre": 0.5, "test_top1_per_epoch": [[1, 0.4], [2, 0.8]]},
          "old": {"top1": 0.6}}
  for name, values in runs.items():
    (tmp_path / name).mkdir()
    (tmp_path / name / "results.json").write_text(json.dumps(values))
  png = tmp_path / "curves.png"
  assert tables.main([str(tmp_path / n) for n in runs]
                     + ["--members", "--timing", f"--curves={png}"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == ("| run | Top-1 | Top-5 | NLL | NLL_c | ECE | members Top-1 | d_re | train min"
                      " | img/s |")
  assert lines[2] == "| van | 70.00 | - | - | - | - | 70.00 | - | 1.5 | 250 |"
  assert lines[3] == "| mix | 80.00 | - | - | - | - | 75.00 / 76.25 | 0.500 | - | - |"
  assert lines[4] == "| old | 60.00 | - | - | - | - | - | - | - | - |"
  assert tables_lib.curves([str(tmp_path / n) for n in runs]) == {
      "van": [(1, 0.5), (2, 0.7)], "mix": [(1, 0.4), (2, 0.8)]}
  with Image.open(png) as image:
    assert image.size == (600, 400)
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
  for colour in ((31, 119, 180), (255, 127, 14)):  # tab:blue, tab:orange: both runs drawn.
    assert (np.abs(pixels - colour).sum(axis=1) < 10).sum() > 50, colour
  assert tables.main([str(tmp_path / "old"), f"--curves={tmp_path / 'none.png'}"]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: --curves: no run recorded") and len(err.splitlines()) == 1
  assert not (tmp_path / "none.png").exists()


def test_best_on_test_picks_the_later_of_tied_epochs_and_tables_label_it(tmp_path, capsys):
  import json
  from mixmo_tf import tables
  from mixmo_tf.training.loop import best_on_test
  history = [{"epoch": 1, "step": 10, "top1": 0.5, "nll": 1.0},
             {"epoch": 2, "step": 20, "top1": 0.7, "nll": 0.8},
             {"epoch": 3, "step": 30},  # not evaluated
             {"epoch": 4, "step": 40, "top1": 0.7, "nll": 0.9},
             {"epoch": 5, "step": 50, "top1": 0.6, "nll": 0.7}]
  assert best_on_test(history) == {"epoch": 4, "step": 40, "top1": 0.7, "nll": 0.9}
  assert best_on_test([{"epoch": 1, "step": 5}]) is None
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "results.json").write_text(json.dumps(
      {"top1": 0.6, "nll": 0.7, "diversity_dre": 0.5, "best_on_test": best_on_test(history)}))
  assert tables.main([str(tmp_path / "run"), "--best_on_test"]) == 0
  row = capsys.readouterr().out.splitlines()[2]
  assert row.startswith("| run (best on test: epoch 4) | 70.00 | - | 0.900 |"), row
  assert row.endswith("| - |")  # d_re of the last epoch is not shown as the best epoch's
