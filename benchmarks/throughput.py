"""Throughput benchmark: is MixMo an ensemble "for free"? Prints this run's images/s and ratios.

    [KERAS_BACKEND=tensorflow|jax|torch] python benchmarks/throughput.py
        [--engine=auto|custom|keras] [--quick | --smoke] [--precision=float32|auto|...] [--xla]
        [--cifar_dir=DIR] [--json=PATH] [--compare_onednn [--rounds=2]]

(a) one real train step (repetition, augmentation, masks, forward, backward, SGD) of the training
    engine --engine names, vanilla vs MixMo M = 2 at equal batch (64, counted with repetitions),
    WRN-28-1 / 28-2 / 28-10 (--quick: 28-1):
      custom  the tf.distribute engine's step (`training.tf_engine.TFDistributeEngine`, under a
              OneDeviceStrategy on /cpu:0; TensorFlow backend only), --xla: its XLA forward and
              backward (--jit_compile);
      keras   `MixMoTrainer`'s train step (`training.trainer.trainer_from_config`), one
              `train_on_batch` call: jit-compiled by XLA on JAX, a tf.function on TensorFlow,
              eager on torch; on the backend's default device;
      auto    (default) custom on TensorFlow, keras elsewhere, as `python -m mixmo_tf.train`;
(b) inference, batch 256, through the library's one prediction path (`evaluation.predict.Predictor
    .from_network`: uint8 images in, normalised, member logits out): vanilla, MixMo M = 2 (stems
    folded, as served, and unfolded) and a deep ensemble of 2 vanilla networks;
(c) with --cifar_dir, the input pipeline alone on the real CIFAR-10 JPEGs (decode into memory,
    then epochs of shuffled batches, `data.batches.EpochBatches`), against the train step's rate.
Each figure is the median of round-robin timings after warm-up (vanilla and MixMo rounds
interleaved, so that machine noise hits both alike). Train steps get a fixed synthetic uint8 batch
already on the device (no data pipeline), the same for both engines, so only the step is timed.
The header says what this run measured on: date, CPU, cores, Keras and its backend, engine,
device, precision (on TensorFlow: oneDNN and who set it). Reference figures from other days and
machines live in BUILD_NOTES.md. --smoke: WRN-10-1, one warm-up and one timed call per figure:
checks that every path runs in seconds; its figures mean nothing.

--json=PATH writes the WRN-28-1 figures (XLA off, except the keras engine on JAX, which always
compiles its step) as {"train_img_s": {"vanilla", "mixmo"}, "infer_img_s": {"vanilla", "mixmo"
(folded), "mixmo_stems", "de2"}, "ratios": {...}, "engine", "backend", "xla", "env": {...}}.
--compare_onednn (TensorFlow backend) runs the --quick measurement in fresh processes alternating
TF_ENABLE_ONEDNN_OPTS=0 and 1 (TensorFlow reads it once, at import), --rounds times each, and
prints per-setting medians and the on/off ratios (with --json: {"onednn_off", "onednn_on",
"ratio_on_off", "runs", "engine", "backend", "env"}).
"""

import argparse
import contextlib
import datetime
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
ENGINES = ("auto", "custom", "keras")  # mixmo_tf.config's --engine.
CUSTOM_DEVICE = "/cpu:0"


class UsageError(ValueError):
  """A setting this backend cannot run: reported in one line, exit status 2."""


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


def timing(args, repeats=7):
  """compare_rates' warm-up and repetitions for this run (--smoke: one of each)."""
  return dict(warmup=1, repeats=1, calls=1) if args.smoke else dict(repeats=repeats)


@contextlib.contextmanager
def dtype_policy(name: str):
  """Keras' global dtype policy set to `name` while networks are built (as a run sets it for
  --precision), float32 afterwards."""
  import keras
  keras.mixed_precision.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.mixed_precision.set_dtype_policy("float32")


def bench_config(output_dir, engine, width, members, jit=False, precision="float32", depth=28):
  """The Config of one timed network: digits resized to 32 px (CIFAR's shape), Cut-MixMo with
  b = 2 for M = 2, vanilla (b = 1) for M = 1, batch 64; `engine` settled by
  `training.engines.resolve` for this backend (ValueError naming what cannot run here). Nothing
  is written to `output_dir`."""
  import keras

  from mixmo_tf.config import Config
  from mixmo_tf.training import engines
  config = Config(dataset="digits", image_size=32, depth=depth, width=width,
                  num_members=members, batch_repetitions=1 if members == 1 else 2,
                  mixing="cutmix", batch_size=TRAIN_BATCH, epochs=1, jit_compile=jit,
                  precision=precision, engine=engine, output_dir=output_dir,
                  log_every_steps=10**9).validate()
  return engines.resolve(config, keras.backend.backend())


def bench_info():
  """The DataInfo of the timed networks: the digits' statistics and augmentation at 32x32."""
  from mixmo_tf.data import datasets
  return datasets.digits_dataset().info.resized(32)


def synthetic_batch(config, info):
  """A fixed batch of B/b unique uint8 images and labels, on the backend's default device."""
  import keras
  import numpy as np
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (config.unique_batch_size,) + tuple(info.image_shape))
  labels = rng.integers(0, info.num_classes, config.unique_batch_size)
  return (keras.ops.convert_to_tensor(images.astype(np.uint8)),
          keras.ops.convert_to_tensor(labels.astype(np.int32)))


def custom_step_fn(config, info):
  """One step of the tf.distribute engine (`TFDistributeEngine`, one replica on /cpu:0): its own
  compiled per-step function on the synthetic batch, the loss fetched to the host."""
  import tensorflow as tf

  from mixmo_tf.run_folder import RunFolder
  from mixmo_tf.training.tf_engine import TFDistributeEngine
  strategy = tf.distribute.OneDeviceStrategy(CUSTOM_DEVICE)
  with dtype_policy(config.precision):  # As `training.loop.start_run` sets it for the run.
    # A RunFolder only for the engine's checkpoint store (nothing is saved: not prepared).
    engine = TFDistributeEngine(config, info, strategy, RunFolder(config.output_dir))
  with tf.device(CUSTOM_DEVICE):
    batch = synthetic_batch(config, info)
  epoch = tf.constant(1, tf.int64)
  # The engine's compiled per-step function, the one `TFDistributeEngine.train` calls for every
  # batch (it advances the engine's step counter): timing it, not a copy, keeps the figure its own.
  step_fn = engine.train_step

  def run():
    loss, _ = step_fn(batch, engine.step.read_value(), epoch)
    loss.numpy()
  return run


def keras_step_fn(config, info):
  """One step of the Keras engine: `MixMoTrainer.train_on_batch` (the train step `fit` runs,
  jit-compiled on JAX) on the synthetic batch; it returns host values, so the step has run."""
  from mixmo_tf.training.trainer import trainer_from_config
  with dtype_policy(config.precision):
    trainer = trainer_from_config(config, info)
  batch = synthetic_batch(config, info)

  def run():
    trainer.train_on_batch(batch)
  return run


def train_step_fn(config, info):
  """The one-step function of the engine `config.engine` names."""
  return (custom_step_fn if config.engine == "custom" else keras_step_fn)(config, info)


def inference_fn(networks, info, batch=INFER_BATCH):
  """One prediction of each network on a fixed uint8 batch through `Predictor.from_network`
  (normalisation, the same image into every stem, BN in inference mode), logits to the host."""
  import numpy as np

  from mixmo_tf.evaluation.predict import Predictor
  images = np.random.default_rng(0).integers(0, 256, (batch,) + tuple(info.image_shape))
  images = images.astype(np.uint8)
  predictors = [Predictor.from_network(network, info) for network in networks]

  def run():
    for predictor in predictors:
      predictor(images)
  return run


def pipeline_rate(cifar_dir):
  """(images, decode seconds, median unique images/s of an epoch's batches) of a JPEG folder:
  `data.datasets.load` (decoded once into memory), then the batches of 3 epochs
  (`data.batches.EpochBatches`, B/b = 32 unique images, the run's data order)."""
  from mixmo_tf.config import Config
  from mixmo_tf.data import datasets
  from mixmo_tf.data.batches import EpochBatches
  config = Config(dataset="folder", data_dir=cifar_dir, output_dir=cifar_dir)  # Not written.
  t0 = time.perf_counter()
  data = datasets.load(config)
  decode = time.perf_counter() - t0
  batches = EpochBatches(data.train, 32, config.seed)
  rates = []
  for epoch in range(3):
    start, n = time.perf_counter(), 0
    for (images, _), _ in batches.span(epoch, 0, batches.num_batches):
      n += int(images.shape[0])
    rates.append(n / (time.perf_counter() - start))
  return data.info.num_train + data.info.num_test, decode, statistics.median(rates)


def ratios(train, infer):
  """The ratios that matter: MixMo's train-step time and inference speed against the others."""
  return {"train_time_mixmo_over_vanilla": train["vanilla"] / train["mixmo"],
          "infer_mixmo_over_vanilla": infer["mixmo"] / infer["vanilla"],
          "infer_mixmo_over_de2": infer["mixmo"] / infer["de2"],
          "infer_mixmo_stems_over_vanilla": infer["mixmo_stems"] / infer["vanilla"]}


def backend_device(backend):
  """The device the Keras engine and the predictions run on by default."""
  if backend == "jax":
    import jax
    return str(jax.devices()[0])
  if backend == "torch":
    import torch
    return "cuda:0" if torch.cuda.is_available() else "cpu"
  import tensorflow as tf
  gpus = tf.config.list_logical_devices("GPU")
  return gpus[0].name if gpus else "/cpu:0"


def run_environment(requested, engine):
  """This process's settings (`mixmo_tf.runtime.environment()` and the backend's); mixmo_tf is
  imported first, so it configures TensorFlow's environment before TensorFlow loads."""
  from mixmo_tf import runtime
  from mixmo_tf.training import engines
  import keras
  backend = keras.backend.backend()
  device = CUSTOM_DEVICE if engine == "custom" else backend_device(backend)
  accelerator = engine != "custom" and engines.accelerator_present(backend)
  versions = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
  module = __import__(versions[backend]) if backend in versions else None
  env = runtime.environment()
  env.update(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
             keras=keras.__version__, backend=backend,
             backend_version=getattr(module, "__version__", ""), python=sys.version.split()[0],
             engine=engine, precision=runtime.resolve_precision(requested, backend, accelerator),
             precision_requested=requested,
             precision_reason=runtime.precision_reason(requested, backend, accelerator),
             device=device)
  if backend == "tensorflow":
    env["tensorflow"] = module.__version__
  return env


def header(env):
  onednn = ""
  if env["backend"] == "tensorflow":
    onednn = (f"; oneDNN {'on' if env['onednn'] else 'off'} (TF_ENABLE_ONEDNN_OPTS="
              f"{env['tf_enable_onednn_opts']}, {env['onednn_source']})")
  return (f"# {env['date']}; CPU {env['cpu_model']}, {env['cpu_count']} cores, native bf16 "
          f"{'yes' if env['native_bf16'] else 'no'}; Keras {env['keras']} on {env['backend']} "
          f"{env['backend_version']}{onednn}; engine {env['engine']} on {env['device']}; "
          f"precision {env['precision']} ({env['precision_reason']})")


def xla_settings(args, engine, backend):
  """Whether each timed train step is XLA-compiled: the custom engine without (and with --xla,
  also with) XLA; the keras engine as its backend compiles (JAX: always)."""
  if engine == "custom":
    return (False, True) if args.xla else (False,)
  return (backend == "jax",)


def measure(args, engine):
  """Runs (a), (b) and (c) in this process, prints the tables; returns the JSON figures."""
  from mixmo_tf.models import build_from_config
  env = run_environment(args.precision, engine)
  precision, backend = env["precision"], env["backend"]
  print(header(env), flush=True)
  depth = 10 if args.smoke else 28
  info = bench_info()
  widths = (1,) if args.quick or args.smoke else (1, 2, 10)
  print(f"\n(a) train step ({engine} engine), batch {TRAIN_BATCH} (with repetitions), images/s")
  print("| net | XLA | vanilla | MixMo M=2 | time ratio MixMo/vanilla |")
  print("|---|---|---|---|---|")
  step_rates = {}
  for width in widths:
    for jit in xla_settings(args, engine, backend):
      configs = {m: bench_config(args.work_dir, engine, width, m, jit and engine == "custom",
                                 precision, depth) for m in (1, 2)}
      rates = compare_rates({m: train_step_fn(c, info) for m, c in configs.items()},
                            TRAIN_BATCH, **timing(args, repeats=3 if width == 10 else 7))
      step_rates[(width, jit)] = {"vanilla": rates[1], "mixmo": rates[2]}
      print(f"| WRN-{depth}-{width} | {'on' if jit else 'off'} | {rates[1]:.0f} | "
            f"{rates[2]:.0f} | {rates[1] / rates[2]:.3f} |", flush=True)
  print(f"\n(b) inference, batch {INFER_BATCH}, images/s (Predictor.from_network)")
  print("| net | vanilla | MixMo M=2 (folded) | MixMo M=2 (M stems) | DE of 2 | "
        "MixMo/vanilla | MixMo/DE |")
  print("|---|---|---|---|---|---|---|")
  infer_rates = {}
  for width in ((1,) if args.quick or args.smoke else (1, 2)):
    with dtype_policy(precision):
      vanilla, mixmo, other = (build_from_config(bench_config(
          args.work_dir, engine, width, m, False, precision, depth), info) for m in (1, 2, 1))
      folded = mixmo.folded()
    r = compare_rates({"vanilla": inference_fn([vanilla], info),
                       "mixmo": inference_fn([folded], info),
                       "mixmo_stems": inference_fn([mixmo], info),
                       "de2": inference_fn([vanilla, other], info)}, INFER_BATCH, **timing(args))
    infer_rates[width] = r
    print(f"| WRN-{depth}-{width} | {r['vanilla']:.0f} | {r['mixmo']:.0f} | "
          f"{r['mixmo_stems']:.0f} | {r['de2']:.0f} | {r['mixmo'] / r['vanilla']:.3f} | "
          f"{r['mixmo'] / r['de2']:.2f} |", flush=True)
  xla = xla_settings(args, engine, backend)[0]
  figures = {"net": f"WRN-{depth}-1", "xla": xla, "train_batch": TRAIN_BATCH,
             "infer_batch": INFER_BATCH, "train_img_s": step_rates[(1, xla)],
             "infer_img_s": infer_rates[1], "engine": engine, "backend": backend}
  figures["ratios"] = ratios(figures["train_img_s"], figures["infer_img_s"])
  if args.cifar_dir:
    count, decode, rate = pipeline_rate(args.cifar_dir)
    train_img = step_rates[(1, xla)]["mixmo"]
    print(f"\n(c) input pipeline on {count} real CIFAR-10 JPEGs: decode {decode:.1f} s "
          f"({count / decode:.0f} img/s); epochs of batches {rate:.0f} unique img/s = "
          f"{rate * 2:.0f} img/s with b = 2 repetitions; {rate * 2 / train_img:.1f}x the "
          f"WRN-{depth}-1 MixMo train step ({train_img:.0f} img/s)")
    figures["pipeline"] = {"images": count, "decode_seconds": decode, "cached_unique_img_s": rate}
  figures["env"] = env
  return figures


def compare_onednn(args, engine):
  """The --quick measurement in fresh processes, TF_ENABLE_ONEDNN_OPTS alternating 0, 1, 0, 1..."""
  runs = []
  with tempfile.TemporaryDirectory() as tmp:
    for round_ in range(args.rounds):
      for value in ("0", "1"):
        path = os.path.join(tmp, f"run_{round_}_{value}.json")
        command = [sys.executable, os.path.abspath(__file__), "--smoke" if args.smoke else
                   "--quick", f"--json={path}", f"--precision={args.precision}",
                   f"--engine={engine}"]
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
        f"{env['keras']}; engine {engine} on {env['device']}; precision (oneDNN off / on) "
        f"{precisions}")
  print(f"\n{runs[-1]['net']}, XLA off: median of {args.rounds} processes per setting, "
        "alternating 0, 1, 0, 1...; images/s")
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
          "rounds": args.rounds, "runs": runs, "engine": engine, "backend": env["backend"],
          "env": {k: v for k, v in env.items() if k not in (
              "onednn", "onednn_source", "tf_enable_onednn_opts")}}


def resolve_engine(args):
  """(engine, backend): --engine settled for this process's Keras backend; UsageError (one line)
  for what cannot run here (--engine=custom off TensorFlow, --xla with the keras engine,
  --compare_onednn off TensorFlow, a --cifar_dir without train/ and test/ class folders)."""
  import mixmo_tf  # noqa: F401  (first: it sets TensorFlow's environment before Keras loads it)
  import keras
  backend = keras.backend.backend()
  try:
    engine = bench_config(args.work_dir, args.engine, 1, 1).engine
  except ValueError as error:  # training.engines.resolve's refusal, naming the flag and backend.
    raise UsageError(str(error)) from None
  if args.xla and engine != "custom":
    how = "always compiles its step with XLA" if backend == "jax" else "runs it without XLA"
    raise UsageError(f"--xla times the custom engine's step with XLA; the keras engine on "
                     f"{backend} {how} (drop --xla).")
  if args.compare_onednn and backend != "tensorflow":
    raise UsageError(f"--compare_onednn compares TensorFlow's oneDNN kernels: it needs "
                     f"KERAS_BACKEND=tensorflow, not {backend}.")
  if args.cifar_dir:  # Listed now (a second): a wrong folder fails before minutes of timing.
    from mixmo_tf.data import datasets
    try:
      datasets.folder_listing(args.cifar_dir)
    except ValueError as error:
      raise UsageError(f"--cifar_dir: {error}") from None
  return engine, backend


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--engine", default="auto", choices=ENGINES,
                      help="Training engine whose step is timed: custom (tf.distribute, "
                           "TensorFlow backend), keras (MixMoTrainer, any backend) or auto "
                           "(custom on TensorFlow, else keras).")
  parser.add_argument("--quick", action="store_true", help="WRN-28-1 only.")
  parser.add_argument("--smoke", action="store_true",
                      help="WRN-10-1, one warm-up and one timed call per figure: checks that "
                           "every path runs (figures meaningless).")
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
  with tempfile.TemporaryDirectory(prefix="throughput_") as work_dir:
    args.work_dir = os.path.join(work_dir, "run")  # Configs need an output_dir; none is written.
    try:
      engine, _ = resolve_engine(args)
    except UsageError as error:
      print(f"throughput: error: {error}", file=sys.stderr, flush=True)
      return 2
    figures = compare_onednn(args, engine) if args.compare_onednn else measure(args, engine)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(figures, f, indent=1, sort_keys=True)
    print(f"\nwrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
