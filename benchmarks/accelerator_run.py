"""One timed accelerator session on JAX: train-step throughput, then a budgeted Cut-MixMo run.

    KERAS_BACKEND=jax python benchmarks/accelerator_run.py --data=cifar10-jpeg.tar.gz \
        --output_dir=OUT [--minutes=8] [--smoke]

Needs only JAX, Keras (and its dependencies), NumPy, Pillow and absl-py: never TensorFlow, so it
runs on an accelerator image without it (KERAS_BACKEND defaults to jax here). Within the wall
budget --minutes it
(1) reads the CIFAR-10 JPEGs of --data (the tarball, the unpacked `cifar10` folder or its parent)
    once into memory (`mixmo_tf.data.datasets.folder_listing` and `decode`: Pillow off
    TensorFlow);
(2) times the real Keras train step (`MixMoTrainer.fit`: repetition, augmentation, masks,
    forward, backward, SGD) of vanilla WRN-28-10 (M = 1, b = 1) and Cut-MixMo WRN-28-10 (M = 2,
    b = 2), batch 64 counted with repetitions, in float32 and mixed_bfloat16; the first call
    (trace + XLA compile + one step) is reported apart from the timed steps;
(3) trains Cut-MixMo WRN-28-10 (the paper's CIFAR-10 row, flags/cifar10/) on CIFAR-10 for as many
    epochs as the rest of the budget holds at the measured step time, the paper's schedule
    compressed to them (warmup, then x0.1 at 1/3, 2/3 and 3/4 of the steps; p(e) decays over the
    last twelfth of the epochs), printing test Top-1 / NLL per epoch and the ensemble metrics at
    the end.
Test-set predictions go through the library's one prediction path
(`mixmo_tf.evaluation.predict`: `Predictor.from_network`, `predict_batches`), the metrics through
`mixmo_tf.evaluation.metrics`. Every figure is printed as it comes and written to
OUTPUT_DIR/accelerator_run.json, rewritten atomically after each one, so an interrupted run keeps
what it measured.

--smoke runs the same code paths in about a minute on two CPU cores (mostly XLA compiles):
WRN-10-1, batch 16, a 256-image train subset (only those files are unpacked), 500 test images, a
few timed steps and at most 2 epochs. BUILD_NOTES.md says which wheels to carry to an accelerator
image that has JAX but not Keras.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # Before Keras is imported (in main's callees).

import numpy as np  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# The paper's CIFAR-10 WRN-28-10 rows (docs/method.md §7.1), as flags/generate.py wrote them.
CUTMIXMO_FLAGS = os.path.join(REPO, "flags", "cifar10",
                              "wrn2810-2_cutmixmo-p5_standard_bar2.flags")
VANILLA_FLAGS = os.path.join(REPO, "flags", "cifar10", "wrn2810_1net_standard_bar1.flags")
PRECISIONS = ("float32", "mixed_bfloat16")
VARIANTS = ("vanilla", "cutmixmo")
JSON_NAME = "accelerator_run.json"
UNPACKED_MARKER = ".accelerator_run_unpacked"
SMOKE_DEFAULTS = dict(minutes=1.5, depth=10, width=1, batch_size=16, train_subset=256,
                      test_subset=500, bench_steps=2, bench_warmup_steps=1, bench_rounds=1,
                      max_epochs=2)
REAL_DEFAULTS = dict(minutes=8.0, depth=28, width=10, batch_size=64, train_subset=0,
                     test_subset=0, bench_steps=50, bench_warmup_steps=5, bench_rounds=3,
                     max_epochs=0)


def parse_args(argv=None) -> argparse.Namespace:
  """Command-line settings; --smoke fills the unset sizes with its small values."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", required=True,
                      help="cifar10-jpeg.tar.gz, or the unpacked cifar10 folder, or its parent.")
  parser.add_argument("--output_dir", required=True, help="Where accelerator_run.json goes.")
  parser.add_argument("--workdir", default="",
                      help="Where a tarball is unpacked (kept, reused by the next run); default: "
                           "a temporary folder removed at the end.")
  parser.add_argument("--minutes", type=float, default=None,
                      help="Wall-clock budget of the whole run (default 8; --smoke 1.5).")
  parser.add_argument("--smoke", action="store_true",
                      help="Tiny network and data, same code paths: a CPU check in about a "
                           "minute.")
  parser.add_argument("--depth", type=int, default=None, help="WRN depth (default 28; smoke 10).")
  parser.add_argument("--width", type=int, default=None, help="WRN width (default 10; smoke 1).")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="Batch size counted with repetitions, the paper's 64 (smoke 16).")
  parser.add_argument("--train_subset", type=int, default=None,
                      help="Fixed random subset of the training images (0: all 50,000).")
  parser.add_argument("--test_subset", type=int, default=None,
                      help="Fixed random subset of the test images (0: all 10,000).")
  parser.add_argument("--bench_precisions", default=",".join(PRECISIONS),
                      help="Precisions whose train step is timed (comma-separated).")
  parser.add_argument("--bench_steps", type=int, default=None, help="Timed steps per round.")
  parser.add_argument("--bench_warmup_steps", type=int, default=None,
                      help="Untimed steps after the compiling first step.")
  parser.add_argument("--bench_rounds", type=int, default=None,
                      help="Timed rounds per configuration (the median is reported).")
  parser.add_argument("--train_precision", default="auto", choices=("auto",) + PRECISIONS,
                      help="Precision of the training run; auto: the faster measured Cut-MixMo.")
  parser.add_argument("--max_epochs", type=int, default=None,
                      help="Cap on the epochs the budget gives (0: none; smoke 2).")
  parser.add_argument("--eval_batch_size", type=int, default=500, help="Test-set predict batch.")
  parser.add_argument("--jax_cache_dir", default="",
                      help="JAX persistent compilation cache (reruns skip XLA compiles).")
  args = parser.parse_args(argv)
  defaults = SMOKE_DEFAULTS if args.smoke else REAL_DEFAULTS
  for name, value in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  args.bench_precisions = tuple(p.strip() for p in args.bench_precisions.split(",") if p.strip())
  problems = [f"--bench_precisions: {p!r} is not one of {', '.join(PRECISIONS)}"
              for p in args.bench_precisions if p not in PRECISIONS]
  if args.batch_size is not None and args.batch_size % 2:
    problems.append(f"--batch_size={args.batch_size} must be even (Cut-MixMo repeats each "
                    "example b = 2 times)")
  if args.depth < 10 or (args.depth - 4) % 6:
    problems.append(f"--depth={args.depth} is not 6n + 4 with n >= 1 (10, 16, 22, 28, ...)")
  if args.width < 1:
    problems.append(f"--width={args.width} must be >= 1")
  if args.batch_size and 0 < args.train_subset < args.batch_size // 2:
    problems.append(f"--train_subset={args.train_subset} is smaller than one Cut-MixMo batch of "
                    f"unique images ({args.batch_size // 2} = --batch_size / 2)")
  if args.train_precision == "auto" and not args.bench_precisions:
    problems.append("--train_precision=auto needs at least one --bench_precisions")
  for name in ("minutes", "batch_size", "bench_steps", "bench_rounds", "eval_batch_size"):
    if not getattr(args, name) > 0:
      problems.append(f"--{name}={getattr(args, name)!r} must be > 0")
  for name in ("train_subset", "test_subset", "bench_warmup_steps", "max_epochs"):
    if getattr(args, name) < 0:
      problems.append(f"--{name}={getattr(args, name)!r} must be >= 0")
  if problems:
    parser.error("; ".join(problems))
  return args


# ------------------------------------------------------------------------------------------------
# Output.


class Report:
  """The run's figures as one JSON document, rewritten atomically after every change."""

  def __init__(self, output_dir: str):
    os.makedirs(output_dir, exist_ok=True)
    self.path = os.path.join(output_dir, JSON_NAME)
    self.data = {"status": "running"}

  def set(self, *keys_and_value) -> None:
    """set("a", "b", value): data["a"]["b"] = value, then write."""
    *keys, value = keys_and_value
    node = self.data
    for key in keys[:-1]:
      node = node.setdefault(key, {})
    node[keys[-1]] = value
    self.write()

  def write(self) -> None:
    temporary = self.path + ".tmp"
    with open(temporary, "w") as f:
      json.dump(self.data, f, indent=2, default=_json_default)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, self.path)


def _json_default(value):
  """NumPy scalars and arrays as plain JSON."""
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def say(message: str) -> None:
  print(message, flush=True)


# ------------------------------------------------------------------------------------------------
# Data.


class InputError(ValueError):
  """Bad input (--data, its layout, its files): reported in one line, without a traceback."""


def _has_splits(folder: str) -> bool:
  return all(os.path.isdir(os.path.join(folder, split)) for split in ("train", "test"))


def _extract(tar, destination: str, members=None) -> None:
  """tarfile's extractall with the safe 'data' filter where this Python has it."""
  try:
    tar.extractall(destination, members=members, filter="data")
  except TypeError:  # Python without extraction filters (< 3.10.12 / 3.11.4).
    tar.extractall(destination, members=members)


def unpack(archive: str, destination: str) -> None:
  """Unpacks a whole tar archive: GNU tar when present (60,000 small files: faster than tarfile)."""
  tar_binary = shutil.which("tar")
  if tar_binary:
    result = subprocess.run([tar_binary, "-xf", archive, "-C", destination, "--no-same-owner"],
                            capture_output=True, text=True)
    if result.returncode == 0:
      return
    say(f"[data] tar failed ({result.stderr.strip()[:200]}); unpacking with Python's tarfile")
  with tarfile.open(archive) as tar:
    _extract(tar, destination)


def _member_name(name: str) -> str:
  while name.startswith("./"):
    name = name[2:]
  return name


def subset_members(tar, train_subset: int, test_subset: int):
  """The image members that `list_image_folder` + `subset_indices` pick from the archive.

  The same order as `list_image_folder` (sorted class folders, then sorted file names) and the
  same fixed indices, for each split under the first of "" and "cifar10/" holding both. None when
  the layout differs or a class would be left empty (then the whole archive is unpacked, and
  `load_data` subsets it or names the problem).
  """
  from mixmo_tf.data.images import IMAGE_EXTENSIONS, subset_indices
  files = {}
  for member in tar.getmembers():
    parts = _member_name(member.name).split("/")
    if member.isfile() and len(parts) >= 3 and parts[-1].lower().endswith(IMAGE_EXTENSIONS):
      key = ("/".join(parts[:-3]), parts[-3])
      files.setdefault(key, {}).setdefault(parts[-2], []).append((parts[-1], member))
  prefix = next((p for p in ("", "cifar10") if (p, "train") in files and (p, "test") in files),
                None)
  if prefix is None:
    return None
  chosen = []
  for split, subset in (("train", train_subset), ("test", test_subset)):
    by_class = files[(prefix, split)]
    listing = [(name, member) for name in sorted(by_class)
               for _, member in sorted(by_class[name], key=lambda pair: pair[0])]
    picked = [listing[i] for i in subset_indices(len(listing), subset)]
    if {name for name, _ in picked} != set(by_class):
      return None
    chosen += [member for _, member in picked]
  return chosen


def _unpacked(folder: str, archive: str) -> bool:
  """Whether `folder` holds a complete unpacking of `archive` (its marker is written last)."""
  marker = os.path.join(folder, UNPACKED_MARKER)
  if not os.path.exists(marker):
    return False
  with open(marker) as f:
    return f.read() == os.path.abspath(archive) + "\n"


def unpack_archive(archive: str, workdir: str, train_subset: int, test_subset: int):
  """(folder, whether it holds only the subsets' images): the archive unpacked under `workdir`.

  Whole into workdir/unpacked-all, or with --train_subset / --test_subset only the images they
  pick into workdir/unpacked-train<N>-test<M> (a few hundred small files instead of 60,000:
  seconds instead of minutes on a slow disk). A complete earlier unpacking is reused.
  """
  whole = os.path.join(workdir, "unpacked-all")
  partial = os.path.join(workdir, f"unpacked-train{train_subset}-test{test_subset}")
  if _unpacked(whole, archive):
    return whole, False
  if (train_subset or test_subset) and _unpacked(partial, archive):
    return partial, True
  selection = None
  if train_subset or test_subset:
    with tarfile.open(archive) as tar:
      selection = subset_members(tar, train_subset, test_subset)
      if selection is not None:
        shutil.rmtree(partial, ignore_errors=True)  # Whatever an interrupted run left.
        os.makedirs(partial)
        _extract(tar, partial, selection)
  if selection is None:
    shutil.rmtree(whole, ignore_errors=True)
    os.makedirs(whole)
    unpack(archive, whole)
  folder = whole if selection is None else partial
  with open(os.path.join(folder, UNPACKED_MARKER), "w") as f:
    f.write(os.path.abspath(archive) + "\n")
  return folder, selection is not None


def find_dataset_root(data: str, workdir: str, train_subset: int = 0, test_subset: int = 0):
  """(root holding train/ and test/ class folders, whether it holds only the subsets' images).

  A tarball is unpacked under `workdir` (`unpack_archive`). Raises InputError naming --data when
  it is missing, not a tarball or folder, or of another layout.
  """
  if not os.path.exists(data):
    raise InputError(f"--data={data!r} does not exist.")
  only_subsets = False
  if os.path.isfile(data):
    if not tarfile.is_tarfile(data):
      raise InputError(f"--data={data!r} is a file but not a tar archive; expected "
                       "cifar10-jpeg.tar.gz or an unpacked cifar10 folder.")
    folder, only_subsets = unpack_archive(data, workdir, train_subset, test_subset)
    what = f"the archive --data={data!r} (unpacked in {folder})"
  else:
    folder, what = data, f"--data={data!r}"
  for candidate in (folder, os.path.join(folder, "cifar10")):
    if _has_splits(candidate):
      return candidate, only_subsets
  raise InputError(f"{what} has neither train/ and test/ class folders nor a cifar10/ folder "
                   "holding them (expected cifar10/train/<class>/*.jpg, "
                   "cifar10/test/<class>/*.jpg).")


def load_data(root: str, train_subset: int, test_subset: int):
  """The class-folder Dataset under `root` (`datasets.folder_listing`, then `datasets.decode`:
  Pillow off TensorFlow) with the fixed --train_subset / --test_subset (`images.subset_indices`)."""
  from mixmo_tf.data import datasets
  from mixmo_tf.data.images import subset_indices
  train_paths, train_y, test_paths, test_y, info = datasets.folder_listing(root, train_subset)
  keep = subset_indices(len(test_paths), test_subset)
  test_paths, test_y = [test_paths[i] for i in keep], test_y[keep]
  info = dataclasses.replace(info, num_test=len(test_paths))
  size = info.image_shape[0]
  return datasets.Dataset(datasets.InMemory(datasets.decode(train_paths, size), train_y),
                          datasets.InMemory(datasets.decode(test_paths, size), test_y), info)


# ------------------------------------------------------------------------------------------------
# Configurations and environment.


def paper_config(flagfile: str, **changes):
  """The Config of a flags/ row (parsed by the package's own flag definitions), with changes."""
  from absl import flags

  from mixmo_tf import config as config_lib
  if not os.path.isfile(flagfile):
    raise InputError(f"Paper configuration {flagfile!r} not found (run from a checkout of the "
                     "repository).")
  values = flags.FlagValues()
  config_lib.define_flags(values)
  values(["accelerator_run", f"--flagfile={flagfile}"])
  return dataclasses.replace(config_lib.config_from_flags(values), **changes)


def environment() -> dict:
  """Backend, devices and versions this run measured on."""
  import keras

  from mixmo_tf import runtime
  env = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
         "backend": keras.backend.backend(), "keras": keras.__version__,
         "numpy": np.__version__, "python": platform.python_version(),
         "platform": platform.platform(), "cpu_model": runtime.cpu_model(),
         "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
  if env["backend"] == "jax":
    import jax
    import jaxlib
    devices = jax.devices()
    env.update(jax=jax.__version__, jaxlib=jaxlib.__version__,
               device_platform=devices[0].platform, device_kind=devices[0].device_kind,
               device_count=len(devices), devices=[str(d) for d in devices],
               # None: XLA's default, TF32 for float32 convolutions on recent NVIDIA GPUs.
               jax_default_matmul_precision=str(jax.config.jax_default_matmul_precision))
  else:
    try:
      devices = keras.distribution.list_devices()
    except Exception:  # pylint: disable=broad-except  (a backend without the listing)
      devices = []
    env.update(devices=[str(d) for d in devices], device_kind=str(devices[0]) if devices else "")
  return env


@contextlib.contextmanager
def dtype_policy(name: str):
  """Keras' global dtype policy set to `name` while networks are built, float32 afterwards."""
  import keras
  keras.mixed_precision.set_dtype_policy(name)
  try:
    yield
  finally:
    keras.mixed_precision.set_dtype_policy("float32")


def release() -> None:
  """Drops Keras' global state and collects garbage: the device memory of trainers no longer
  referenced is freed before the next one is built."""
  import keras
  keras.backend.clear_session()
  gc.collect()


# ------------------------------------------------------------------------------------------------
# Throughput.


def _tile(examples, count: int):
  """(images, labels): the first `count` examples, cycling through them when they are fewer."""
  return examples.take(np.arange(count) % len(examples))


def timed_predict(predictor, test, args):
  """(seconds, member logits [N, M, K], labels) of the test set through the library's one
  prediction path (`evaluation.predict.predict_batches`; blocking: NumPy logits)."""
  from mixmo_tf.evaluation.predict import predict_batches
  start = time.perf_counter()
  logits, labels = predict_batches(predictor, test, args.eval_batch_size, name="test set")
  return time.perf_counter() - start, logits, labels


def timed_fit(trainer, batches, steps: int) -> float:
  """Seconds of `trainer.fit` over `steps` batches, blocking until the last step is done."""
  start = time.perf_counter()
  history = trainer.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0)
  loss = float(history.history["loss"][-1])  # Host value: every step has run.
  seconds = time.perf_counter() - start
  if not math.isfinite(loss):
    raise FloatingPointError(f"Non-finite loss {loss} while timing the train step.")
  return seconds


def measure_step(config, info, train, args, test=None) -> dict:
  """Compile time and median images/s of the real train step (`MixMoTrainer.fit`).

  The trainer is built for `bench_steps` batches per epoch of real training images (so one fit
  call is one timed round); its first call (trace, XLA compile, one step) is timed on its own,
  then `bench_warmup_steps` untimed steps, then `bench_rounds` rounds. With `test` (the test
  examples), also the test-set predict time (first call with its compile, then one more).
  """
  from mixmo_tf.evaluation.predict import Predictor
  from mixmo_tf.training.trainer import train_arrays_dataset, trainer_from_config
  steps = args.bench_steps
  unique = config.unique_batch_size
  images, labels = _tile(train, steps * unique)
  bench_info = dataclasses.replace(info, num_train=steps * unique)
  with dtype_policy(config.precision):
    trainer = trainer_from_config(config, bench_info)
  batches = train_arrays_dataset(images, labels, unique, config.seed)
  compile_s = timed_fit(trainer, batches, 1)
  if args.bench_warmup_steps:
    timed_fit(trainer, batches, min(args.bench_warmup_steps, steps))
  rounds = [timed_fit(trainer, batches, steps) for _ in range(args.bench_rounds)]
  step_s = statistics.median(rounds) / steps
  result = {"compile_s": compile_s, "step_ms": 1000.0 * step_s,
            "steps_per_s": 1.0 / step_s, "images_per_s": config.batch_size / step_s,
            "unique_images_per_s": unique / step_s, "round_s": rounds, "timed_steps": steps,
            "batch_size": config.batch_size, "batch_repetitions": config.batch_repetitions,
            "num_members": config.num_members, "depth": config.depth, "width": config.width,
            "precision": config.precision,
            "params": int(sum(np.prod(w.shape) for w in trainer.network.trainable_weights))}
  if test is not None:
    predictor = Predictor.from_network(trainer.network, info)
    result["eval_first_s"] = timed_predict(predictor, test, args)[0]
    result["eval_s"] = timed_predict(predictor, test, args)[0]
    result["eval_images_per_s"] = len(test) / result["eval_s"]
    del predictor
  del trainer, batches
  release()
  return result


def run_throughput(report, args, configs, data) -> dict:
  """Times every (precision, variant); prints and records each figure as it comes."""
  results = {}
  for precision in args.bench_precisions:
    for variant in VARIANTS:
      config = dataclasses.replace(configs[variant], precision=precision)
      figures = measure_step(config, data.info, data.train, args,
                             data.test if variant == "cutmixmo" else None)
      results.setdefault(precision, {})[variant] = figures
      report.set("throughput", precision, variant, figures)
      evaluation = (f"; test predict {figures['eval_s']:.2f} s ({figures['eval_images_per_s']:.0f}"
                    f" images/s, first call {figures['eval_first_s']:.1f} s)"
                    if "eval_s" in figures else "")
      say(f"[throughput] {precision:<14} {variant:<8} WRN-{config.depth}-{config.width} "
          f"M={config.num_members} b={config.batch_repetitions} batch {config.batch_size}: "
          f"{figures['images_per_s']:.1f} images/s ({figures['step_ms']:.1f} ms/step, "
          f"{figures['unique_images_per_s']:.1f} unique/s); compile + first step "
          f"{figures['compile_s']:.1f} s{evaluation}")
    pair = results[precision]
    ratio = pair["vanilla"]["images_per_s"] / pair["cutmixmo"]["images_per_s"]
    report.set("throughput", precision, "time_ratio_cutmixmo_over_vanilla", ratio)
    say(f"[throughput] {precision}: Cut-MixMo step time / vanilla step time = {ratio:.3f}")
  return results


# ------------------------------------------------------------------------------------------------
# Training.


def compressed_schedule(paper, total_steps: int, num_train: int) -> dict:
  """The paper's LR schedule shape on `total_steps`: warmup and decays at the same fractions.

  The paper warms up over warmup_steps(N, B, b, 1) steps of its E * N / (B / b), then multiplies
  the LR by 0.1 from epochs 101, 201 and 226 of 300 (1/3, 2/3, 3/4 of training); here they land on
  the same fractions of `total_steps`, in steps (milestones are 1-based steps k >= m).
  """
  from mixmo_tf.core import schedules
  paper_steps = paper.epochs * (num_train // paper.unique_batch_size)
  paper_warmup = schedules.warmup_steps(num_train, paper.batch_size, paper.batch_repetitions,
                                        paper.lr_warmup_epochs)
  warmup = max(1, round(total_steps * paper_warmup / paper_steps))
  milestones = [round(total_steps * (m - 1) / paper.epochs) + 1 for m in paper.lr_decay_epochs]
  return {"base_lr": paper.base_lr, "warmup_steps": warmup, "milestone_steps": milestones,
          "decay_factor": paper.lr_decay_ratio, "total_steps": total_steps,
          "milestone_fractions": [(m - 1) / paper.epochs for m in paper.lr_decay_epochs],
          "warmup_fraction": paper_warmup / paper_steps}


def plan_epochs(args, deadline: float, step_s: float, steps_per_epoch: int, compile_s: float,
                eval_s: float, eval_first_s: float) -> dict:
  """Epochs that fit before `deadline` at the measured step and evaluation times (at least 1)."""
  remaining = deadline - time.monotonic()
  margin = max(10.0, 0.05 * remaining) if not args.smoke else 2.0
  per_epoch = steps_per_epoch * step_s + eval_s
  available = remaining - compile_s - (eval_first_s - eval_s) - margin
  epochs = max(1, int(available // per_epoch))
  if args.max_epochs:
    epochs = min(epochs, args.max_epochs)
  return {"epochs": epochs, "budget_left_s": remaining, "estimated_epoch_s": per_epoch,
          "estimated_train_compile_s": compile_s, "margin_s": margin,
          "estimated_total_s": compile_s + (eval_first_s - eval_s) + epochs * per_epoch}


def deadline_callback(stop_at: float):
  """A Keras callback that ends `fit` once time.monotonic() passes `stop_at`."""
  import keras

  class StopAtDeadline(keras.callbacks.Callback):
    """Checked at each batch start (no device sync: Keras passes no logs there)."""

    def __init__(self):
      super().__init__()
      self.stopped = False

    def on_train_batch_begin(self, batch, logs=None):
      if time.monotonic() >= stop_at:
        self.model.stop_training = True
        self.stopped = True

  return StopAtDeadline()


def run_training(report, args, config, data, plan, deadline: float, eval_s: float) -> dict:
  """Trains with `trainer_from_config` and the compressed schedule; test metrics per epoch."""
  from mixmo_tf.core import optimizers, schedules
  from mixmo_tf.evaluation import metrics
  from mixmo_tf.evaluation.predict import Predictor
  from mixmo_tf.training.trainer import train_arrays_dataset, trainer_from_config
  info = data.info
  epochs = plan["epochs"]
  steps_per_epoch = info.num_train // config.unique_batch_size
  schedule_info = compressed_schedule(config, epochs * steps_per_epoch, info.num_train)
  config = dataclasses.replace(config, epochs=epochs)  # p(e) decays over the last twelfth.
  report.set("training", "schedule", schedule_info)
  with dtype_policy(config.precision):
    trainer = trainer_from_config(config, info)
    # The package's schedule with one "epoch" per step: warmup and decays at step granularity.
    schedule = schedules.WarmupPiecewiseSchedule(
        schedule_info["base_lr"], 1, warmup_steps=schedule_info["warmup_steps"],
        milestones=schedule_info["milestone_steps"], decay_factor=schedule_info["decay_factor"])
    trainer.compile(optimizer=optimizers.make_optimizer(config.optimizer, schedule))
    trainer.learning_rate_schedule = schedule
  batches = train_arrays_dataset(data.train.images, data.train.labels, config.unique_batch_size,
                                 config.seed)
  stopper = deadline_callback(deadline - 1.5 * eval_s - (2.0 if args.smoke else 5.0))
  predictor = Predictor.from_network(trainer.network, info)
  say(f"[train] Cut-MixMo WRN-{config.depth}-{config.width} M={config.num_members} "
      f"b={config.batch_repetitions} batch {config.batch_size} {config.precision}: {epochs} "
      f"epoch(s) of {steps_per_epoch} steps (estimated {plan['estimated_epoch_s']:.1f} s each), "
      f"lr0 {schedule_info['base_lr']:g}, warmup {schedule_info['warmup_steps']} steps, x"
      f"{schedule_info['decay_factor']:g} at steps {schedule_info['milestone_steps']}")
  log, logits, start = [], None, time.perf_counter()
  for epoch in range(epochs):
    lr = float(schedule(trainer.optimizer.iterations))
    began = time.perf_counter()
    history = trainer.fit(batches, initial_epoch=epoch, epochs=epoch + 1, verbose=0,
                          callbacks=[stopper])
    train_s = time.perf_counter() - began
    epoch_eval_s, logits, labels = timed_predict(predictor, data.test, args)
    result = metrics.evaluate_logits(logits, labels, config.ensemble, calibrate=False)
    entry = {"epoch": epoch + 1, "steps": trainer.global_step, "lr_at_start": lr,
             "p_patch": float(schedules.patch_probability(epoch + 1, epochs,
                                                          config.patch_probability)),
             "train_loss": float(history.history["loss"][-1]),
             "train_member_accuracy": float(history.history["accuracy"][-1]),
             "test_top1": result["top1"], "test_nll": result["nll"],
             "test_top1_members": [result[f"top1_member_{i}"]
                                   for i in range(config.num_members)],
             "train_s": train_s, "eval_s": epoch_eval_s,
             "elapsed_s": time.perf_counter() - start, "stopped_by_deadline": stopper.stopped}
    log.append(entry)
    report.set("training", "epochs", log)
    say(f"[train] epoch {epoch + 1}/{epochs}: loss {entry['train_loss']:.4f}, test Top-1 "
        f"{100 * entry['test_top1']:.2f}%, NLL {entry['test_nll']:.4f} (members "
        f"{', '.join(f'{100 * t:.2f}%' for t in entry['test_top1_members'])}); train "
        f"{train_s:.1f} s, eval {epoch_eval_s:.1f} s, step {trainer.global_step}"
        + (" [stopped: budget]" if stopper.stopped else ""))
    if stopper.stopped:
      break
  final = metrics.evaluate_logits(logits, labels, config.ensemble)
  report.set("training", "final", final)
  report.set("training", "completed_steps", trainer.global_step)
  report.set("training", "stopped_by_deadline", stopper.stopped)
  nan = float("nan")
  say(f"[final] ensemble Top-1 {100 * final['top1']:.2f}%, Top-5 {100 * final['top5']:.2f}%, "
      f"NLL {final['nll']:.4f}, ECE {final['ece']:.4f}, NLL_c {final.get('nll_c', nan):.4f}, "
      f"members Top-1 mean {100 * final['top1_members_mean']:.2f}%, diversity (DRE) "
      f"{final.get('diversity_dre', nan):.3f}; {trainer.global_step} steps in "
      f"{time.perf_counter() - start:.1f} s")
  del trainer, batches, predictor
  release()
  return final


# ------------------------------------------------------------------------------------------------


def run(args) -> dict:
  """The whole session; returns the report's data (status "failed: ..." kept if it raises)."""
  report = Report(args.output_dir)
  report.set("settings", dict(vars(args)))
  try:
    _session(report, args)
  except BaseException as error:
    report.set("status", f"failed: {type(error).__name__}: {error}")
    raise
  return report.data


def _session(report, args) -> None:
  """Environment, data, throughput, training, each recorded in `report` as it comes."""
  start = time.monotonic()
  deadline = start + 60.0 * args.minutes
  workdir = args.workdir or tempfile.mkdtemp(prefix="accelerator_run_")
  os.makedirs(workdir, exist_ok=True)
  try:
    _measure(report, args, workdir, start, deadline)
  finally:
    if not args.workdir:  # Kept until the end: the run's Config names the unpacked folder.
      shutil.rmtree(workdir, ignore_errors=True)


def _measure(report, args, workdir: str, start: float, deadline: float) -> None:
  """Data, throughput and training (`_session` without the set-up and clean-up)."""
  began = time.monotonic()
  root, only_subsets = find_dataset_root(args.data, workdir, args.train_subset,
                                         args.test_subset)
  unpack_s = time.monotonic() - began
  began = time.monotonic()
  try:  # An unpacking of only the subsets' images holds them all, in the same order.
    data = load_data(root, 0 if only_subsets else args.train_subset,
                     0 if only_subsets else args.test_subset)
  except ValueError as error:  # No split or class folder, differing classes, an undecodable file.
    raise InputError(f"--data={args.data!r}: {error}") from None
  decode_s = time.monotonic() - began
  info = data.info

  if args.jax_cache_dir and os.environ.get("KERAS_BACKEND") == "jax":
    import jax
    jax.config.update("jax_compilation_cache_dir", args.jax_cache_dir)
  env = environment()  # After the data checks: a bad --data fails before JAX starts.
  report.set("env", env)
  say(f"[env] {env['backend']} backend, {env.get('device_kind', '?')} x"
      f"{env.get('device_count', len(env['devices']))}; jax {env.get('jax', '-')}, keras "
      f"{env['keras']}, python {env['python']}; CPU {env['cpu_model']}; budget "
      f"{args.minutes:g} min")
  report.set("data", {"root": root, "unpacked_only_subsets": only_subsets,
                      "num_train": info.num_train, "num_test": info.num_test,
                      "image_shape": list(info.image_shape), "classes": list(info.class_names),
                      "unpack_s": unpack_s, "decode_s": decode_s})
  say(f"[data] {info.num_train} train / {info.num_test} test images "
      f"{info.image_shape[0]}x{info.image_shape[1]} from {args.data}: unpack {unpack_s:.1f} s, "
      f"decode {decode_s:.1f} s")

  sizes = dict(dataset="folder", data_dir=root, output_dir=args.output_dir, depth=args.depth,
               width=args.width, batch_size=args.batch_size, train_subset=args.train_subset)
  configs = {"vanilla": paper_config(VANILLA_FLAGS, **sizes).validate(),
             "cutmixmo": paper_config(CUTMIXMO_FLAGS, **sizes).validate()}
  report.set("paper_config", json.loads(configs["cutmixmo"].to_json()))

  began = time.monotonic()
  throughput = run_throughput(report, args, configs, data)
  report.set("timeline", "throughput_s", time.monotonic() - began)

  precision = args.train_precision
  if precision == "auto":
    precision = max(throughput, key=lambda p: throughput[p]["cutmixmo"]["images_per_s"])
  bench = throughput.get(precision, {}).get("cutmixmo")
  if bench is None:  # Not timed: time it now.
    bench = measure_step(dataclasses.replace(configs["cutmixmo"], precision=precision), info,
                         data.train, args, data.test)
  config = dataclasses.replace(configs["cutmixmo"], precision=precision)
  steps_per_epoch = info.num_train // config.unique_batch_size
  plan = plan_epochs(args, deadline, bench["step_ms"] / 1000.0, steps_per_epoch,
                     bench["compile_s"], bench["eval_s"], bench["eval_first_s"])
  report.set("training", "precision", precision)
  report.set("training", "plan", plan)
  began = time.monotonic()
  run_training(report, args, config, data, plan, deadline, bench["eval_s"])
  report.set("timeline", "train_s", time.monotonic() - began)
  report.data["timeline"]["total_s"] = time.monotonic() - start
  report.set("status", "done")
  say(f"[done] {report.data['timeline']['total_s']:.1f} s of {60 * args.minutes:.0f} s; figures "
      f"in {report.path}")


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.smoke:  # XLA's LLVM optimisation dominates a tiny network's compile: skip it.
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
      os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()
  try:
    run(args)
  except InputError as error:  # Bad input (--data, layout): one clear line, no traceback.
    print(f"accelerator_run: error: {error}", file=sys.stderr, flush=True)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
