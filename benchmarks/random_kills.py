"""Random SIGKILLs lose nothing: kill a training run at random moments until it finishes.

    python benchmarks/random_kills.py --engine=custom --kills=8 --seed=0 [--work_dir=DIR]

Runs a small digits training (WRN-10-1, M = 2, 2 epochs with a checkpoint per epoch and every
final artifact) once uninterrupted, then again in another folder, killing the process with
SIGKILL after a random delay (seeded, uniform over the uninterrupted run's wall time) and
rerunning the same command, `--kills` times, then lets it finish. For every kill it records where
it landed (start-up, training between checkpoints, a checkpoint write, an evaluation, the
end-of-run writes: read off the folder and the log) and at the end checks that nothing was lost:
the final weights, BN statistics and optimizer state equal the uninterrupted run's (1e-5), every
final artifact exists and loads, no checkpoint is damaged and no temporary file is left. Prints a
summary and, with `--json`, one JSON object (the counts go to BUILD_NOTES.md).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

FLAGS = ["--dataset=digits", "--depth=10", "--width=1", "--num_members=2", "--mixing=cutmix",
         "--batch_repetitions=2", "--batch_size=32", "--train_subset=512", "--epochs=3",
         "--lr_decay_epochs=3", "--seed=3", "--precision=float32", "--checkpoint_frequency=1",
         "--eval_frequency=1", "--log_every_steps=4"]


def command(engine: str, out: str):
  return [sys.executable, "-m", "mixmo_tf.train", f"--engine={engine}", f"--output_dir={out}"] \
      + FLAGS


def state_arrays(folder: str, engine: str):
  """{name: array} of the newest checkpoint (weights, BN statistics, optimizer, step)."""
  from mixmo_tf.run_folder import array_checkpoints
  from mixmo_tf.run_folder.checkpoints import latest_checkpoint
  prefix = latest_checkpoint(os.path.join(folder, "checkpoints"))
  if engine == "keras":
    arrays = array_checkpoints.read(prefix + array_checkpoints.SUFFIX)
    arrays.pop("__paths__")
    return prefix, arrays
  import tensorflow as tf
  reader = tf.train.load_checkpoint(prefix)
  dtypes = reader.get_variable_to_dtype_map()  # Numbers only: not the object graph (a string).
  return prefix, {name: reader.get_tensor(name) for name, dtype in dtypes.items()
                  if dtype != tf.string and "save_counter" not in name}


def where(folder: str, log: str) -> str:
  """Where a kill landed, read off the folder and the process's log."""
  if not os.path.exists(os.path.join(folder, "config.json")):
    return "start-up"
  if glob.glob(os.path.join(folder, "*.tmp*")) or glob.glob(
      os.path.join(folder, "checkpoints", "*.tmp")) or glob.glob(
      os.path.join(folder, "checkpoints", "*_temp*")):
    return "a write in progress"
  lines = [l for l in log.splitlines() if "] " in l]
  last = lines[-1] if lines else ""
  if "Weights fingerprint" in last or "saved_model" in last or "Assets written" in last:
    return "the end-of-run writes"
  if "test top1" in last:
    return "after an evaluation (history, checkpoint)"
  if "step " in last:
    return "training"
  return "start-up"


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--engine", default="custom", choices=("custom", "keras"))
  parser.add_argument("--kills", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--work_dir", default="/tmp/mixmo_random_kills")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  from mixmo_tf import runtime
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  work = os.path.join(args.work_dir, args.engine)
  shutil.rmtree(work, ignore_errors=True)
  whole, killed = os.path.join(work, "whole"), os.path.join(work, "killed")
  start = time.time()
  subprocess.run(command(args.engine, whole), cwd=REPO, env=env, check=True,
                 capture_output=True)
  duration = time.time() - start
  print(f"CPU {runtime.cpu_model()}; uninterrupted run: {duration:.1f} s", flush=True)
  rng = np.random.default_rng(args.seed)
  landed, runs_finished = collections.Counter(), 0
  for kill in range(args.kills):
    delay = float(rng.uniform(0.05, 1.0) * duration)
    process = subprocess.Popen(command(args.engine, killed), cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
      process.wait(timeout=delay)
      runs_finished += 1
      place = "after the run finished"
    except subprocess.TimeoutExpired:
      os.kill(process.pid, signal.SIGKILL)
      process.wait()
      place = None
    log = process.stdout.read()
    place = place or where(killed, log)
    landed[place] += 1
    print(f"kill {kill + 1} at {delay:.1f} s: {place}", flush=True)
  final = subprocess.run(command(args.engine, killed), cwd=REPO, env=env, capture_output=True,
                         text=True)
  assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
  (prefix_a, a), (prefix_b, b) = state_arrays(whole, args.engine), state_arrays(killed,
                                                                               args.engine)
  difference = max(float(np.max(np.abs(np.asarray(a[k], np.float64) - b[k]))) for k in a)
  from mixmo_tf.evaluation.predict import load_network
  from mixmo_tf.run_folder import RunFolder
  from mixmo_tf.run_folder.checkpoints import checkpoint_problem, listed_checkpoints
  lost = []
  if sorted(a) != sorted(b) or os.path.basename(prefix_a) != os.path.basename(prefix_b):
    lost.append("checkpoint contents")
  if difference > 1e-5:
    lost.append(f"state differs by {difference:.3g}")
  missing = RunFolder(killed).missing_artifacts()
  if missing:
    lost.append(f"missing {missing}")
  for name in ("model.keras", "model_folded.keras"):
    load_network(os.path.join(killed, name))
  damaged = [p for p in listed_checkpoints(os.path.join(killed, "checkpoints"))
             if checkpoint_problem(p)]
  if damaged or glob.glob(os.path.join(killed, "checkpoints", "damaged", "*")):
    lost.append(f"damaged checkpoints {damaged}")
  leftovers = glob.glob(os.path.join(killed, "*.tmp*")) + glob.glob(
      os.path.join(killed, "*.old"))
  if leftovers:
    lost.append(f"left over {leftovers}")
  history = json.loads(open(os.path.join(killed, "history.json")).read())
  if [h["epoch"] for h in history] != [1, 2, 3]:
    lost.append(f"history epochs {[h['epoch'] for h in history]}")
  report = dict(engine=args.engine, seed=args.seed, kills=args.kills, landed=dict(landed),
                runs_finished_between_kills=runs_finished, max_state_difference=difference,
                lost=lost, uninterrupted_seconds=duration, cpu_model=runtime.cpu_model())
  print(f"{args.engine}: {args.kills} kills ({dict(landed)}), {runs_finished} finished before "
        f"their kill; final state vs uninterrupted: max |difference| {difference:.3g}; "
        f"lost: {lost or 'nothing'}", flush=True)
  if args.json:
    print(json.dumps(report))
  sys.exit(1 if lost else 0)


if __name__ == "__main__":
  main()
