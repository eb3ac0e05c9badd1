"""Deep ensembles and N-ensembles of MixMo: N runs of the driver with seeds seed..seed+N-1.

    python -m baselines.ensemble --flagfile=flags/cifar100/wrn2810_1net_standard_bar1.flags \
        --num_runs=2 --output_dir=runs/c100_de2            # DE (2 nets), Table 1
    python -m baselines.ensemble --flagfile=flags/cifar100/wrn2810-2_cutmixmo-p5_msdacutmix_bar4.flags \
        --num_runs=2 --output_dir=runs/c100_cutmixmo_x2    # N = 2 ensemble of Cut-MixMo (Table 6)

Each member trains in output_dir/run_<i> (resumable like any run); the ensemble's metrics go to
output_dir/ensemble_results.json and ensemble_table.md. `--ood=NAME[,NAME...]` (TFDS names or
folder:PATH, TFDS sets from --ood_data_dir) also scores the ensemble, the pooled N x M member
logits, against those out-of-distribution sets: ensemble_results.json's ensemble.ood and
output_dir/ood_table.md (docs/method.md §17).
"""

import dataclasses
import json
import os

from absl import app, flags, logging

from mixmo_tf import evaluate, train
from mixmo_tf.config import config_from_flags, define_flags

define_flags()
flags.DEFINE_integer("num_runs", 2, "N, the number of independently trained runs.")
flags.DEFINE_enum("combine", "logits", ["logits", "probs"],
                  "Average the N x M member logits (then softmax) or their probabilities.")
FLAGS = flags.FLAGS


def run_ensemble(config, num_runs: int, combine: str):
  """Trains (or resumes) N runs of `config` with consecutive seeds, then evaluates their average
  (and scores it against the `config.ood` sets)."""
  if num_runs < 1:
    raise ValueError(f"--num_runs={num_runs} is not valid; expected an integer >= 1.")
  run_dirs = []
  for i in range(num_runs):
    member = dataclasses.replace(config, seed=config.seed + i,
                                 output_dir=os.path.join(config.output_dir, f"run_{i}"))
    if not os.path.exists(os.path.join(member.output_dir, "results.json")):
      train.run(member)
    run_dirs.append(member.output_dir)
  results = evaluate.ensemble_runs(run_dirs, combine, config.data_dir or None, config.ood,
                                   config.ood_data_dir or None)
  with open(os.path.join(config.output_dir, "ensemble_results.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  rows = dict(results["runs"])
  rows[f"ensemble of {num_runs}"] = results["ensemble"]
  with open(os.path.join(config.output_dir, "ensemble_table.md"), "w") as f:
    f.write(evaluate.markdown_table(rows))
  if "ood" in results["ensemble"]:
    evaluate.write_ood_table(config.output_dir, results["ensemble"]["ood"])
  return results


def main(argv):
  from mixmo_tf import runtime
  runtime.use_absl_handler_for_tensorflow()
  runtime.log_environment_once()
  del argv
  config = config_from_flags(FLAGS).validate()
  results = run_ensemble(config, FLAGS.num_runs, FLAGS.combine)
  logging.info("Ensemble of %d: top1 %.4f, nll %.4f", FLAGS.num_runs,
               results["ensemble"]["top1"], results["ensemble"]["nll"])


if __name__ == "__main__":
  app.run(main)
