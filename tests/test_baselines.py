"""Deep ensembles and N-ensembles of MixMo run end to end through the driver."""

import json

import numpy as np

from baselines.ensemble import run_ensemble
from tests.helpers import tiny_config


def test_deep_ensemble_and_mixmo_ensemble_on_digits(tmp_path):
  for name, overrides in (("de", dict(num_members=1, batch_repetitions=1)), ("mixmo", {})):
    config = tiny_config(tmp_path / name, epochs=2, **overrides)
    results = run_ensemble(config, num_runs=2, combine="logits")
    ens, runs = results["ensemble"], results["runs"]
    assert ens["num_runs"] == 2 and set(runs) == {"run_0", "run_1"}
    members = 2 * config.num_members
    assert sum(k.startswith("top1_member_") for k in ens) == members
    # Differently seeded runs differ, and their average is not either of them.
    assert runs["run_0"]["nll"] != runs["run_1"]["nll"]
    for run in runs.values():
      assert ens["nll"] != run["nll"] and np.isfinite(ens["nll"])
    saved = json.loads((tmp_path / name / "ensemble_results.json").read_text())
    assert saved["ensemble"]["top1"] == ens["top1"]
    assert (tmp_path / name / "ensemble_table.md").read_text().count("\n") == 5
