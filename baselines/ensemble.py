"""Deep ensembles and N-ensembles of MixMo: N runs of the driver with seeds seed..seed+N-1.

    python -m baselines.ensemble --flagfile=flags/cifar100/wrn2810_1net_standard_bar1.flags \
        --num_runs=2 --output_dir=runs/c100_de2            # DE (2 nets), Table 1
    python -m baselines.ensemble --flagfile=flags/cifar100/wrn2810-2_cutmixmo-p5_msdacutmix_bar4.flags \
        --num_runs=2 --output_dir=runs/c100_cutmixmo_x2    # N = 2 ensemble of Cut-MixMo (Table 6)

Each member trains in output_dir/run_<i> (resumable like any run; a finished one, holding its
completion record results.json, is not trained again); the ensemble's metrics go to
output_dir/ensemble_results.json and ensemble_table.md. `--ood=NAME[,NAME...]` (folder:PATH, or
TFDS names from --ood_data_dir) also scores the ensemble, the pooled N x M member logits, against
those out-of-distribution sets: ensemble_results.json's ensemble.ood and output_dir/ood_table.md
(docs/method.md §17). Works on every Keras backend.
"""

import dataclasses
import os
import sys

from absl import flags, logging

from mixmo_tf import commands, training
from mixmo_tf.config import config_from_flags, define_flags as define_config_flags
from mixmo_tf.core import seeds
from mixmo_tf.evaluation import runs, tables
from mixmo_tf.run_folder import RunFolder
from mixmo_tf.run_folder.atomic import write_json_atomic, write_text_atomic


def define_flags(flag_values) -> None:
  """The driver's flags plus --num_runs and --combine, on `flag_values`."""
  define_config_flags(flag_values)
  flags.DEFINE_integer("num_runs", 2, "N, the number of independently trained runs.",
                       flag_values=flag_values)
  flags.DEFINE_enum("combine", "logits", ["logits", "probs"],
                    "Average the N x M member logits (then softmax) or their probabilities.",
                    flag_values=flag_values)


def run_ensemble(config, num_runs: int, combine: str):
  """Trains (or resumes, or completes) N runs of `config` with consecutive seeds, then evaluates
  their average (and scores it against the `config.ood` sets)."""
  if num_runs < 1:
    raise ValueError(f"--num_runs={num_runs} is not valid; expected an integer >= 1.")
  seeds.check_seed(config.seed + num_runs - 1,
                   f"--seed={config.seed} with --num_runs={num_runs}: the last run's seed")
  run_dirs = []
  for i in range(num_runs):
    member = dataclasses.replace(config, seed=config.seed + i,
                                 output_dir=os.path.join(config.output_dir, f"run_{i}"))
    if not RunFolder(member.output_dir).is_complete():
      training.run(member)
    run_dirs.append(member.output_dir)
  results = runs.ensemble_runs(run_dirs, combine, config.data_dir or None, config.ood,
                               config.ood_data_dir or None)
  write_json_atomic(os.path.join(config.output_dir, "ensemble_results.json"), results)
  rows = dict(results["runs"])
  rows[f"ensemble of {num_runs}"] = results["ensemble"]
  write_text_atomic(os.path.join(config.output_dir, "ensemble_table.md"),
                    tables.markdown_table(rows))
  if "ood" in results["ensemble"]:
    runs.write_ood_table(config.output_dir, results["ensemble"]["ood"])
  return results


def main(argv, flag_values) -> None:
  del argv
  config = config_from_flags(flag_values).validate()
  results = run_ensemble(config, flag_values.num_runs, flag_values.combine)
  logging.info("Ensemble of %d: top1 %.4f, nll %.4f", flag_values.num_runs,
               results["ensemble"]["top1"], results["ensemble"]["nll"])


if __name__ == "__main__":
  commands.run(sys.modules[__name__])
