"""Throughput benchmark: is MixMo an ensemble "for free"? Prints this run's images/s and ratios.

    python benchmarks/throughput.py [--quick] [--precision=float32|auto|...] [--xla]
        [--cifar_dir=DIR] [--json=PATH] [--compare_onednn [--rounds=2]]

(a) the real train step (repetition, augmentation, masks, forward, backward, SGD), vanilla vs MixMo
    M = 2 at equal batch (64, counted with repetitions), WRN-28-1 / 28-2 / 28-10 (--quick: 28-1);
(b) inference, batch 256: vanilla, MixMo M = 2 (stems folded, as served, and unfolded) and a deep
    ensemble of 2 vanilla networks;
(c) with --cifar_dir, the input pipeline alone on the real CIFAR-10 JPEGs (decode + cache, then
    cached epochs of shuffled batches), compared with the train step's image rate.
Each figure is the median of round-robin timings after warm-up, on one CPU device. Train and
inference steps feed synthetic uint8 batches to the real step functions, so only the model and the
step are timed. The header says what this run measured on: date, CPU, cores, TensorFlow, oneDNN
(and who set it), precision. Reference figures from other days and machines live in BUILD_NOTES.md.

--json=PATH writes the WRN-28-1 figures (XLA off) as {"train_img_s": {"vanilla", "mixmo"},
"infer_img_s": {"vanilla", "mixmo" (folded), "mixmo_stems", "de2"}, "ratios": {...}, "env": {...}}.
--compare_onednn runs the --quick measurement in fresh processes alternating TF_ENABLE_ONEDNN_OPTS=0
and 1 (TensorFlow reads it once, at import), --rounds times each, and prints per-setting medians and
the on/off ratios (with --json: {"onednn_off", "onednn_on", "ratio_on_off", "runs", "env"}).
"""

import argparse
import datetime
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, REPO)

TRAIN_BATCH, INFER_BATCH = 64, 256
TRAIN_KEYS = ("vanilla", "mixmo")
INFER_KEYS = ("vanilla", "mixmo", "mixmo_stems", "de2")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")  # mixmo_tf.runtime's.


def compare_rates(fns, images_per_call, warmup=3, repeats=7, calls=3):
  """Median images/s of each function, timed round-robin so that machine noise hits all alike."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  rates = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      for _ in range(calls):
        fn()
      rates[name].append(images_per_call * calls / (time.perf_counter() - start))
  return {name: statistics.median(r) for name, r in rates.items()}


def make_trainer(width, members, jit=False, precision="float32", depth=28):
  """A Trainer on one CPU device for WRN-depth-width with `members` subnetworks."""
  import tensorflow as tf
  from mixmo_tf.config import Config
  from mixmo_tf.custom_loop import build_trainer
  config = Config(dataset="digits", image_size=32, depth=depth, width=width,
                  num_members=members, batch_repetitions=1 if members == 1 else 2,
                  mixing="cutmix", batch_size=TRAIN_BATCH, epochs=1, jit_compile=jit,
                  precision=precision, output_dir=tempfile.mkdtemp(), log_every_steps=10**9)
  return build_trainer(config, tf.distribute.OneDeviceStrategy("/cpu:0"))


def train_step_fn(trainer):
  """The real distributed train step on a fixed synthetic uint8 batch of B/b unique images."""
  import numpy as np
  import tensorflow as tf
  c = trainer.config
  rng = np.random.default_rng(0)
  batch = (tf.constant(rng.integers(0, 256, (c.unique_batch_size, 32, 32, 3)), tf.uint8),
           tf.constant(rng.integers(0, 10, c.unique_batch_size), tf.int32))
  step = tf.Variable(0, dtype=tf.int64)
  epoch = tf.constant(1, tf.int64)

  def run():
    loss, _ = trainer.train_step(batch, step.read_value(), epoch)
    step.assign_add(1)
    loss.numpy()
  return run


def forward(model, x):
  """Inference forward pass: the same images into every stem."""
  return model([x] * model.num_inputs, training=False)


def inference_fn(models, batch=INFER_BATCH):
  """One forward pass of each model (every stem gets the same images) on a fixed batch."""
  import numpy as np
  import tensorflow as tf
  x = tf.constant(np.random.default_rng(0).normal(size=(batch, 32, 32, 3)), tf.float32)
  # One tf.function per model, each traced once. A partial, not a lambda: TensorFlow counts the
  # traces of every function sharing a code object and would warn of retracing.
  fns = [tf.function(functools.partial(forward, m)) for m in models]

  def run():
    for fn in fns:
      fn(x).numpy()
  return run


def pipeline_rate(cifar_dir):
  """(images, decode + cache seconds, median cached-epoch unique images/s) of a JPEG folder."""
  from mixmo_tf import data as data_lib
  from mixmo_tf.config import Config
  config = Config(dataset="folder", data_dir=cifar_dir, output_dir=tempfile.mkdtemp())
  t0 = time.perf_counter()
  train, _, info = data_lib.load(config)
  decode = time.perf_counter() - t0
  rates = []
  for epoch in range(3):
    start, n = time.perf_counter(), 0
    for images, _ in data_lib.train_batches(train, info, 32, 0, epoch):
      n += int(images.shape[0])
    rates.append(n / (time.perf_counter() - start))
  return info.num_train + info.num_test, decode, statistics.median(rates)


def ratios(train, infer):
  """The ratios that matter: MixMo's train-step time and inference speed against the others."""
  return {"train_time_mixmo_over_vanilla": train["vanilla"] / train["mixmo"],
          "infer_mixmo_over_vanilla": infer["mixmo"] / infer["vanilla"],
          "infer_mixmo_over_de2": infer["mixmo"] / infer["de2"],
          "infer_mixmo_stems_over_vanilla": infer["mixmo_stems"] / infer["vanilla"]}


def run_environment(requested):
  """This process's settings; imports mixmo_tf (which configures TensorFlow) before TensorFlow."""
  from mixmo_tf import runtime
  import keras
  import tensorflow as tf
  precision = runtime.resolve_precision(requested, keras.backend.backend(), accelerator=False)
  env = runtime.environment()
  env.update(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
             tensorflow=tf.__version__, keras=keras.__version__, python=sys.version.split()[0],
             precision=precision, precision_requested=requested,
             precision_reason=runtime.precision_reason(requested, keras.backend.backend()),
             device="/cpu:0")
  return env


def header(env):
  onednn = "on" if env["onednn"] else "off"
  value = env["tf_enable_onednn_opts"]
  return (f"# {env['date']}; CPU {env['cpu_model']}, {env['cpu_count']} cores, native bf16 "
          f"{'yes' if env['native_bf16'] else 'no'}; TensorFlow {env['tensorflow']}, Keras "
          f"{env['keras']}; oneDNN {onednn} (TF_ENABLE_ONEDNN_OPTS={value}, "
          f"{env['onednn_source']}); precision {env['precision']} ({env['precision_reason']})")


def measure(args):
  """Runs (a), (b) and (c) in this process, prints the tables; returns the JSON figures."""
  env = run_environment(args.precision)
  precision = env["precision"]
  print(header(env), flush=True)
  widths = (1,) if args.quick else (1, 2, 10)
  print(f"\n(a) train step, batch {TRAIN_BATCH} (with repetitions), images/s")
  print("| net | XLA | vanilla | MixMo M=2 | time ratio MixMo/vanilla |")
  print("|---|---|---|---|---|")
  step_rates = {}
  for width in widths:
    for jit in ((False, True) if args.xla else (False,)):
      repeats = 3 if width == 10 else 7
      rates = compare_rates({m: train_step_fn(make_trainer(width, m, jit, precision))
                             for m in (1, 2)}, TRAIN_BATCH, repeats=repeats)
      step_rates[(width, jit)] = {"vanilla": rates[1], "mixmo": rates[2]}
      print(f"| WRN-28-{width} | {'on' if jit else 'off'} | {rates[1]:.0f} | {rates[2]:.0f} | "
            f"{rates[1] / rates[2]:.3f} |", flush=True)
  print(f"\n(b) inference, batch {INFER_BATCH}, images/s")
  print("| net | vanilla | MixMo M=2 (folded) | MixMo M=2 (M stems) | DE of 2 | "
        "MixMo/vanilla | MixMo/DE |")
  print("|---|---|---|---|---|---|---|")
  infer_rates = {}
  for width in ((1,) if args.quick else (1, 2)):
    vanilla = make_trainer(width, 1, precision=precision).model
    mixmo = make_trainer(width, 2, precision=precision).model
    other = make_trainer(width, 1, precision=precision).model
    r = compare_rates({"vanilla": inference_fn([vanilla]), "mixmo": inference_fn([mixmo.folded()]),
                       "mixmo_stems": inference_fn([mixmo]),
                       "de2": inference_fn([vanilla, other])}, INFER_BATCH)
    infer_rates[width] = r
    print(f"| WRN-28-{width} | {r['vanilla']:.0f} | {r['mixmo']:.0f} | {r['mixmo_stems']:.0f} | "
          f"{r['de2']:.0f} | {r['mixmo'] / r['vanilla']:.3f} | {r['mixmo'] / r['de2']:.2f} |",
          flush=True)
  figures = {"net": "WRN-28-1", "xla": False, "train_batch": TRAIN_BATCH,
             "infer_batch": INFER_BATCH, "train_img_s": step_rates[(1, False)],
             "infer_img_s": infer_rates[1]}
  figures["ratios"] = ratios(figures["train_img_s"], figures["infer_img_s"])
  if args.cifar_dir:
    count, decode, rate = pipeline_rate(args.cifar_dir)
    train_img = step_rates[(1, False)]["mixmo"]
    print(f"\n(c) input pipeline on {count} real CIFAR-10 JPEGs: decode + cache {decode:.1f} s "
          f"({count / decode:.0f} img/s); cached epochs {rate:.0f} unique img/s = "
          f"{rate * 2:.0f} img/s with b = 2 repetitions; {rate * 2 / train_img:.1f}x the WRN-28-1 "
          f"MixMo train step ({train_img:.0f} img/s)")
    figures["pipeline"] = {"images": count, "decode_seconds": decode, "cached_unique_img_s": rate}
  figures["env"] = env
  return figures


def compare_onednn(args):
  """The --quick measurement in fresh processes, TF_ENABLE_ONEDNN_OPTS alternating 0, 1, 0, 1..."""
  runs = []
  with tempfile.TemporaryDirectory() as tmp:
    for round_ in range(args.rounds):
      for value in ("0", "1"):
        path = os.path.join(tmp, f"run_{round_}_{value}.json")
        command = [sys.executable, os.path.abspath(__file__), "--quick", f"--json={path}",
                   f"--precision={args.precision}"]
        print(f"# round {round_ + 1}/{args.rounds}, TF_ENABLE_ONEDNN_OPTS={value}: "
              f"{' '.join(command[1:])}", flush=True)
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=value)
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
          run = json.load(f)
        if run["env"]["onednn"] != (value == "1"):
          raise RuntimeError(f"TF_ENABLE_ONEDNN_OPTS={value} gave oneDNN "
                             f"{run['env']['onednn']} in {path}.")
        runs.append({"onednn": value == "1", **run})
  settings = {}
  for on in (False, True):
    mine = [r for r in runs if r["onednn"] is on]
    settings[on] = {
        group: {k: statistics.median(r[group][k] for r in mine) for k in mine[0][group]}
        for group in ("train_img_s", "infer_img_s", "ratios")}
  ratio = {group: {k: settings[True][group][k] / settings[False][group][k]
                   for k in settings[True][group]} for group in ("train_img_s", "infer_img_s")}
  env = runs[-1]["env"]
  precisions = " / ".join(next(r["env"]["precision"] for r in runs if r["onednn"] is on)
                          for on in (False, True))
  print(f"\n# {env['date']}; CPU {env['cpu_model']}, {env['cpu_count']} cores, native bf16 "
        f"{'yes' if env['native_bf16'] else 'no'}; TensorFlow {env['tensorflow']}, Keras "
        f"{env['keras']}; precision (oneDNN off / on) {precisions}")
  print(f"\nWRN-28-1, XLA off: median of {args.rounds} processes per setting, alternating "
        "0, 1, 0, 1...; images/s")
  print("| figure | oneDNN off | oneDNN on | on/off | per run (off / on) |")
  print("|---|---|---|---|---|")
  labels = {"train_img_s": "train step, batch 64", "infer_img_s": "inference, batch 256"}
  for group, keys in (("train_img_s", TRAIN_KEYS), ("infer_img_s", INFER_KEYS)):
    for k in keys:
      per_run = " / ".join(", ".join(f"{r[group][k]:.0f}" for r in runs if r["onednn"] is on)
                           for on in (False, True))
      print(f"| {labels[group]}: {k} | {settings[False][group][k]:.0f} | "
            f"{settings[True][group][k]:.0f} | {ratio[group][k]:.3f} | {per_run} |")
  for k in ratios({k: 1 for k in TRAIN_KEYS}, {k: 1 for k in INFER_KEYS}):  # In their order.
    print(f"| ratio {k} | {settings[False]['ratios'][k]:.3f} | {settings[True]['ratios'][k]:.3f} "
          "| | |")
  return {"onednn_off": settings[False], "onednn_on": settings[True], "ratio_on_off": ratio,
          "rounds": args.rounds, "runs": runs, "env": {k: v for k, v in env.items() if k not in (
              "onednn", "onednn_source", "tf_enable_onednn_opts")}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="WRN-28-1 only.")
  parser.add_argument("--cifar_dir", default="", help="Unpacked CIFAR-10 JPEG tree (c).")
  parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                      help="float32, mixed_float16, mixed_bfloat16 or auto (as --precision of "
                           "mixmo_tf.train: mixmo_tf.runtime.resolve_precision on CPU).")
  parser.add_argument("--xla", action="store_true", help="Also time the train step with XLA.")
  parser.add_argument("--json", default="", help="Write this run's figures to this JSON file.")
  parser.add_argument("--compare_onednn", action="store_true",
                      help="Time --quick with TF_ENABLE_ONEDNN_OPTS=0 and 1 in alternating "
                           "processes.")
  parser.add_argument("--rounds", type=int, default=2,
                      help="Processes per setting with --compare_onednn.")
  args = parser.parse_args()
  if args.rounds < 1:
    parser.error(f"--rounds must be at least 1, got {args.rounds}.")
  if args.compare_onednn and (args.cifar_dir or args.xla):
    parser.error("--compare_onednn times the --quick measurement only: drop --cifar_dir / --xla.")
  figures = compare_onednn(args) if args.compare_onednn else measure(args)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(figures, f, indent=1, sort_keys=True)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
  main()
