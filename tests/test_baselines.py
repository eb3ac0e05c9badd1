"""Deep ensembles and N-ensembles of MixMo run end to end through the driver; the ensemble is the
softmax of the mean of all N x M pooled member logits (docs/method.md §11)."""

import json

import numpy as np
import pytest

from baselines.ensemble import run_ensemble
from mixmo_tf import data as data_lib
from mixmo_tf.predict import load_predictor, predict_dataset
from tests.helpers import tiny_config


@pytest.mark.parametrize("name,overrides", [("de", dict(num_members=1, batch_repetitions=1)),
                                            ("mixmo", {})])
def test_ensemble_of_runs_is_the_pooled_logit_mean(tmp_path, name, overrides):
  config = tiny_config(tmp_path / name, epochs=2, **overrides)
  results = run_ensemble(config, num_runs=2, combine="logits")
  ens, runs = results["ensemble"], results["runs"]
  assert ens["num_runs"] == 2 and set(runs) == {"run_0", "run_1"}
  assert sum(k.startswith("top1_member_") for k in ens) == 2 * config.num_members
  # Recompute the ensemble by hand from each run's own member logits.
  _, test, _ = data_lib.load(config)
  pooled, labels = [], None
  for i in range(2):
    predictor, _, _ = load_predictor(str(tmp_path / name / f"run_{i}"))
    logits, labels = predict_dataset(predictor, test)
    pooled.append(logits)
  pooled = np.concatenate(pooled, axis=1).astype(np.float64)  # [N, 2M, K]
  assert pooled.shape[1] == 2 * config.num_members
  mean = pooled.mean(axis=1)
  probs = np.exp(mean - mean.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  assert ens["nll"] == pytest.approx(np.mean(-np.log(probs[np.arange(len(labels)), labels]
                                                     + 1e-12)), rel=1e-9)
  assert ens["top1"] == pytest.approx(np.mean(probs.argmax(1) == labels), abs=1e-12)
  assert runs["run_0"]["nll"] != runs["run_1"]["nll"]  # differently seeded runs differ
  saved = json.loads((tmp_path / name / "ensemble_results.json").read_text())
  assert saved["ensemble"]["top1"] == ens["top1"]
  assert (tmp_path / name / "ensemble_table.md").read_text().count("\n") == 5
