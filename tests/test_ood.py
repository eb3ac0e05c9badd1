"""OOD scores and detection metrics against scikit-learn and hand-computed cases."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from mixmo_tf.evaluation import ood
from mixmo_tf.evaluation import plots
from tests.helpers import assert_non_blank_png


def _sklearn_metrics(in_scores, out_scores):
  y_out = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
  scores = np.r_[in_scores, out_scores]
  return {"auroc": roc_auc_score(y_out, scores),
          "aupr_out": average_precision_score(y_out, scores),
          "aupr_in": average_precision_score(1 - y_out, -scores)}


@pytest.mark.parametrize("seed, num_in, num_out", [(0, 200, 50), (1, 37, 300), (2, 500, 499),
                                                   (3, 1, 40), (4, 25, 1)])
def test_auroc_and_aupr_match_sklearn_with_ties(seed, num_in, num_out):
  rng = np.random.default_rng(seed)
  # One decimal: ~20 distinct values, so most thresholds hold tied in- and out-scores.
  in_scores = np.round(rng.normal(0.0, 0.5, num_in), 1)
  out_scores = np.round(rng.normal(0.4, 0.5, num_out), 1)
  got = ood.detection_metrics(in_scores, out_scores)
  expected = _sklearn_metrics(in_scores, out_scores)
  for key in ("auroc", "aupr_out", "aupr_in"):
    assert got[key] == pytest.approx(expected[key], abs=1e-12), key
  # AUPR-in and AUPR-out differ on unbalanced sets: catches swapped or un-negated scores.
  if num_in != num_out:
    assert got["aupr_in"] != pytest.approx(got["aupr_out"], abs=1e-3)


def test_aupr_ties_grouped_not_interpolated():
  # Scores [in 1, out 1, out 0]: sorted descending, {1} holds one in and one out: P = 1/2 at
  # recall 1/2, then P = 2/3 at recall 1. AP = 1/2 x 1/2 + 1/2 x 2/3 = 7/12. Sorting the tie
  # out-first would give 1/2 x 1 + 1/2 x 2/3 = 5/6.
  got = ood.detection_metrics([1.0], [1.0, 0.0])
  assert got["aupr_out"] == pytest.approx(7 / 12, abs=1e-15)
  assert got["auroc"] == pytest.approx(0.25, abs=1e-15)  # Pairs: tie (1/2), in above out (0).


def test_auroc_reference_cases():
  rng = np.random.default_rng(5)
  same = ood.detection_metrics(rng.normal(size=20000), rng.normal(size=20000))
  assert same["auroc"] == pytest.approx(0.5, abs=0.01)
  constant = ood.detection_metrics(np.ones(30), np.ones(70))  # All tied: exactly 1/2.
  assert constant["auroc"] == 0.5
  assert constant["fpr95"] == 1.0
  separated = ood.detection_metrics(rng.uniform(0, 1, 40), rng.uniform(2, 3, 60))
  assert separated == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
  in_scores = np.round(rng.normal(size=300), 1)
  out_scores = np.round(rng.normal(0.3, 1.0, size=200), 1)
  forward = ood.detection_metrics(in_scores, out_scores)["auroc"]
  backward = ood.detection_metrics(out_scores, in_scores)["auroc"]
  assert forward > 0.55  # OOD scores higher: higher means more OOD.
  assert backward == pytest.approx(1.0 - forward, abs=1e-12)


def test_fpr95_hand_computed():
  out_scores = np.arange(1.0, 21.0)  # 1, 2, ..., 20.
  # 95% of 20 = 19 must be detected: t = the 19th largest OOD score = 2 (scores >= 2 are 2..20).
  # t = 3 detects only 18 (90%). A linearly interpolated 5th percentile would give t = 1.95.
  # In-dist >= 2: 2 (tie at t, flagged), 3, 5, 10, 25 -> 5 of 10; 1.97 is not flagged.
  in_scores = np.array([0.0, 0.5, 1.0, 1.5, 1.97, 2.0, 3.0, 5.0, 10.0, 25.0])
  assert ood.detection_metrics(in_scores, out_scores)["fpr95"] == pytest.approx(5 / 10)
  # Tie across the threshold among OOD scores: [1, 1, 1, 4, ..., 20] -> the 19th largest is 1,
  # so t = 1 (TPR = 100%): in-dist >= 1 are 1.0, 1.5, 1.97, 2, 3, 5, 10, 25 -> 8 of 10.
  tied_out = np.r_[1.0, 1.0, 1.0, np.arange(4.0, 21.0)]
  assert len(tied_out) == 20
  assert ood.detection_metrics(in_scores, tied_out)["fpr95"] == pytest.approx(8 / 10)
  # 40 OOD scores 1..40: ceil(0.95 x 40) = 38 detected, t = 3; in-dist >= 3: 3, 5, 10, 25.
  assert ood.detection_metrics(in_scores, np.arange(1.0, 41.0))["fpr95"] == pytest.approx(0.4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fpr95_matches_sklearn_roc_curve(seed):
  from sklearn.metrics import roc_curve
  rng = np.random.default_rng(seed)
  in_scores = np.round(rng.normal(size=333), 1)
  out_scores = np.round(rng.normal(1.0, 1.0, size=101), 1)
  y_out = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
  fpr, tpr, _ = roc_curve(y_out, np.r_[in_scores, out_scores], drop_intermediate=False)
  assert ood.detection_metrics(in_scores, out_scores)["fpr95"] == fpr[np.argmax(tpr >= 0.95)]
  ours_fpr, ours_tpr = ood.roc_curve(in_scores, out_scores)
  np.testing.assert_allclose(ours_fpr, fpr, atol=1e-15)
  np.testing.assert_allclose(ours_tpr, tpr, atol=1e-15)


def test_detection_metrics_errors():
  with pytest.raises(ValueError, match="in_scores is empty"):
    ood.detection_metrics([], [1.0])
  with pytest.raises(ValueError, match="out_scores is empty"):
    ood.detection_metrics([1.0], np.array([]))
  with pytest.raises(ValueError, match="out_scores has 1 non-finite.*nan"):
    ood.detection_metrics([1.0], [0.0, np.nan])
  with pytest.raises(ValueError, match="in_scores has 2 non-finite.*inf"):
    ood.detection_metrics([np.inf, 1.0, -np.inf], [0.0])
  with pytest.raises(ValueError, match=r"\(2, 2\)"):
    ood.detection_metrics(np.zeros((2, 2)), [0.0])


def test_mutual_information_and_disagreement():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(500, 1, 10)) * 3
  for mode in ("logits", "probs"):
    # Identical members: the unclipped difference is +-1e-16 rounding, about half negative here.
    same = ood.uncertainty_scores(np.repeat(logits, 3, axis=1), mode)
    assert np.all(np.abs(same["mutual_information"]) <= 1e-12)
    assert np.all(same["mutual_information"] >= 0)
    assert np.all(same["disagreement"] == 0)
  differ = ood.uncertainty_scores(rng.normal(size=(50, 3, 10)) * 3)
  assert np.all(differ["mutual_information"] > 1e-6)
  # Hand check, K = 2, members certain of class 0 and of class 1: the mean member is uniform
  # (entropy log 2) and each member's entropy is ~0, so MI = log 2.
  opposite = ood.uncertainty_scores(np.array([[[50.0, 0.0], [0.0, 50.0]]]), "logits")
  assert opposite["mutual_information"][0] == pytest.approx(np.log(2), abs=1e-12)
  assert opposite["disagreement"][0] == 1.0
  assert opposite["entropy"][0] == pytest.approx(np.log(2), abs=1e-12)  # softmax(mean) uniform.
  # M = 3, K = 3, argmaxes per example: (0, 0, 0), (0, 0, 1), (0, 1, 2), (2, 2, 1), (1, 0, 0).
  # Of the 3 pairs, (0, 0, 1) and (1, 0, 0) disagree on 2: 2/3.
  eye = 5.0 * np.eye(4)
  three = np.stack([eye[[0, 0, 0]], eye[[0, 0, 1]], eye[[0, 1, 2]], eye[[2, 2, 1]],
                    eye[[1, 0, 0]]])
  np.testing.assert_allclose(ood.uncertainty_scores(three)["disagreement"],
                             [0.0, 2 / 3, 1.0, 2 / 3, 2 / 3], atol=1e-15)
  # M = 4, 6 pairs: (0, 0, 1, 1) -> 4 differ, (0, 0, 0, 1) -> 3, (0, 1, 2, 3) -> 6.
  four = np.stack([eye[[0, 0, 1, 1]], eye[[0, 0, 0, 1]], eye[[0, 1, 2, 3]]])
  np.testing.assert_allclose(ood.uncertainty_scores(four)["disagreement"],
                             [4 / 6, 3 / 6, 1.0], atol=1e-15)


def test_mutual_information_uses_mean_probs_whatever_mode():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(20, 3, 5)) * 2
  p = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
  entropy = lambda q: -(q * np.log(q)).sum(-1)  # noqa: E731
  expected = entropy(p.mean(1)) - entropy(p).mean(1)
  for mode in ("logits", "probs"):
    np.testing.assert_allclose(ood.uncertainty_scores(logits, mode)["mutual_information"],
                               expected, rtol=1e-10, atol=1e-14)
  by_logits = ood.uncertainty_scores(logits, "logits")
  mean_logit_p = np.exp(logits.mean(1)) / np.exp(logits.mean(1)).sum(1, keepdims=True)
  np.testing.assert_allclose(by_logits["entropy"], entropy(mean_logit_p), rtol=1e-10)
  np.testing.assert_allclose(by_logits["msp"], 1 - mean_logit_p.max(1), rtol=1e-10)
  np.testing.assert_allclose(ood.uncertainty_scores(logits, "probs")["entropy"],
                             entropy(p.mean(1)), rtol=1e-10)


def test_msp_and_entropy_orientation():
  confident = np.array([[[10.0, 0.0, 0.0, 0.0]]])
  uniform = np.zeros((1, 1, 4))
  scores = ood.uncertainty_scores(np.concatenate([confident, uniform]))
  assert set(scores) == {"msp", "entropy"}
  assert scores["msp"][0] < scores["msp"][1]
  assert scores["msp"][1] == pytest.approx(0.75)
  assert scores["entropy"][0] < scores["entropy"][1]
  assert scores["entropy"][1] == pytest.approx(np.log(4))
  with pytest.raises(ValueError, match="'bogus'"):
    ood.uncertainty_scores(uniform, "bogus")
  with pytest.raises(ValueError, match=r"\(3, 4\)"):
    ood.uncertainty_scores(np.zeros((3, 4)))


def test_evaluate_ood_keys_shapes_and_table():
  rng = np.random.default_rng(7)
  in_logits = rng.normal(size=(60, 2, 5)) * 3
  in_logits[:, :, 0] += 6  # Confident, agreeing members in-distribution.
  out_logits = rng.normal(size=(40, 2, 5))
  results = ood.evaluate_ood(in_logits, out_logits)
  assert list(results) == ["msp", "entropy", "mutual_information", "disagreement"]
  assert all(set(r) == {"auroc", "aupr_in", "aupr_out", "fpr95"} for r in results.values())
  assert results["msp"]["auroc"] > 0.9
  single = ood.evaluate_ood(in_logits[:, :1], out_logits[:, :1], "probs")
  assert set(single) == {"msp", "entropy"}
  with pytest.raises(ValueError, match=r"\(60, 2, 5\).*\(40, 3, 5\)"):
    ood.evaluate_ood(in_logits, rng.normal(size=(40, 3, 5)))
  with pytest.raises(ValueError, match=r"\(40, 2, 4\)"):
    ood.evaluate_ood(in_logits, rng.normal(size=(40, 2, 4)))
  table = ood.markdown_table({"svhn": results, "noise": single})
  lines = table.strip().split("\n")
  assert lines[0] == "| OOD set | score | AUROC | AUPR-in | AUPR-out | FPR@95 |"
  assert len(lines) == 2 + 4 + 2
  r = results["msp"]
  assert lines[2] == (f"| svhn | msp | {100 * r['auroc']:.2f} | {100 * r['aupr_in']:.2f} | "
                      f"{100 * r['aupr_out']:.2f} | {100 * r['fpr95']:.2f} |")
  assert lines[-1].startswith("| noise | entropy | ")


def test_ood_plots_write_non_blank_pngs(tmp_path):
  rng = np.random.default_rng(0)
  in_scores, out_scores = rng.normal(size=300), rng.normal(1.0, 1.0, size=200)
  path = plots.ood_score_histograms(in_scores, out_scores, str(tmp_path / "h" / "hist.png"),
                                    "entropy: CIFAR-10 vs SVHN")
  assert_non_blank_png(path)
  path = plots.ood_roc_curves({"msp": (in_scores, out_scores),
                               "entropy": (in_scores, np.round(out_scores, 1))},
                              str(tmp_path / "roc.png"), "ROC, OOD positive")
  assert_non_blank_png(path)
  with pytest.raises(ValueError, match="at least one"):
    plots.ood_roc_curves({}, str(tmp_path / "empty.png"), "empty")
