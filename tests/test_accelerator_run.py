"""benchmarks/accelerator_run.py: its --smoke run on JAX without TensorFlow, on the real CIFAR-10
tarball, and its data, schedule and budget helpers.

The smoke run is a subprocess with KERAS_BACKEND=jax and TensorFlow, TFP and TFDS unimportable, as
on the accelerator image the script is for (`helpers.run_without_tensorflow`); it checks the JSON
the script writes, not only its exit status.
"""

import importlib.util
import json
import math
import os
import pathlib
import tarfile

import pytest

from conftest import SHARED_DATA
from tests.helpers import run_without_tensorflow

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "accelerator_run.py"


def load_script():
  """The script as a module, without letting its KERAS_BACKEND default leak into this process."""
  saved = os.environ.get("KERAS_BACKEND")
  try:
    spec = importlib.util.spec_from_file_location("accelerator_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  finally:
    if saved is None:
      os.environ.pop("KERAS_BACKEND", None)
    else:
      os.environ["KERAS_BACKEND"] = saved
  return module


def finite(value):
  return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.slow
def test_smoke_run_on_jax_without_tensorflow(tmp_path):
  if not SHARED_DATA.exists():
    pytest.skip(f"real CIFAR-10 archive not found at {SHARED_DATA}")
  out = tmp_path / "out"
  # XLA's LLVM optimisation dominates the tiny network's compile (the script adds it in --smoke
  # too; set here so that the whole subprocess, imports included, sees it).
  xla_flags = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
  log = run_without_tensorflow(
      [str(SCRIPT), "--smoke", f"--data={SHARED_DATA}", f"--output_dir={out}",
       f"--workdir={tmp_path / 'work'}"],
      backend="jax", env={"XLA_FLAGS": xla_flags}, timeout=600, cwd=tmp_path)
  assert "BLOCKED_MODULES_LOADED 0" in log, log[-6000:]
  report = json.loads((out / "accelerator_run.json").read_text())
  assert report["status"] == "done", report["status"]

  environment = report["env"]
  assert environment["backend"] == "jax" and environment["device_kind"], environment
  assert all(environment[k] for k in ("jax", "keras", "python", "cpu_model")), environment
  data = report["data"]
  assert (data["num_train"], data["num_test"]) == (256, 500), data
  assert data["unpacked_only_subsets"] and len(data["classes"]) == 10, data

  for precision in ("float32", "mixed_bfloat16"):
    for variant, members, repetitions in (("vanilla", 1, 1), ("cutmixmo", 2, 2)):
      figures = report["throughput"][precision][variant]
      assert figures["images_per_s"] > 0 and finite(figures["images_per_s"]), figures
      assert figures["compile_s"] > 0 and figures["precision"] == precision, figures
      assert (figures["num_members"], figures["batch_repetitions"]) == (members, repetitions)
      assert f"[throughput] {precision:<14} {variant:<8}" in log, log[-6000:]
    assert report["throughput"][precision]["cutmixmo"]["eval_s"] > 0

  training = report["training"]
  assert training["precision"] in ("float32", "mixed_bfloat16")
  epochs = training["epochs"]
  assert 1 <= len(epochs) <= training["plan"]["epochs"] <= 2, training["plan"]
  for entry in epochs:
    assert 0.0 <= entry["test_top1"] <= 1.0 and finite(entry["test_nll"]), entry
    assert entry["test_nll"] > 0 and finite(entry["train_loss"]), entry
  steps_per_epoch = 256 // 8  # Batch 16 with b = 2: 8 unique images per step.
  assert epochs[-1]["steps"] == len(epochs) * steps_per_epoch or epochs[-1]["stopped_by_deadline"]
  assert training["schedule"]["total_steps"] == training["plan"]["epochs"] * steps_per_epoch
  final = training["final"]
  assert 0.0 <= final["top1"] <= final["top5"] <= 1.0 and finite(final["nll"]), final
  assert final["top1"] == epochs[-1]["test_top1"] and "diversity_dre" in final, final
  assert finite(final["nll_c"]) and 0.0 <= final["top1_member_1"] <= 1.0, final
  assert "[final] ensemble Top-1" in log, log[-6000:]
  print(f"smoke run: {report['timeline']['total_s']:.1f} s in the script")


def test_subset_unpacking_picks_the_listing_s_subset(cifar10_folder, tmp_path):
  """Unpacking only --train_subset / --test_subset images yields exactly the files (and order)
  that list_image_folder + subset_indices pick from the whole unpacked archive."""
  from mixmo_tf.data.images import list_image_folder, subset_indices
  script = load_script()
  root, only_subsets = script.find_dataset_root(str(SHARED_DATA), str(tmp_path), 300, 70)
  assert only_subsets and pathlib.Path(root) == tmp_path / "unpacked-train300-test70" / "cifar10"
  for split, subset in (("train", 300), ("test", 70)):
    full, full_labels, classes = list_image_folder(str(cifar10_folder), split)
    keep = subset_indices(len(full), subset)
    expected = [(os.path.relpath(full[i], cifar10_folder), full_labels[i]) for i in keep]
    paths, labels, subset_classes = list_image_folder(root, split)
    assert [(os.path.relpath(p, root), y) for p, y in zip(paths, labels)] == expected
    assert subset_classes == classes
  # The unpacking is reused for the same subsets, not for others (then all is unpacked once).
  assert script.find_dataset_root(str(SHARED_DATA), str(tmp_path), 300, 70) == (root, True)


def test_data_argument_forms_and_errors(cifar10_folder, tmp_path, capsys):
  script = load_script()
  folder = str(cifar10_folder)
  assert script.find_dataset_root(folder, str(tmp_path)) == (folder, False)
  assert script.find_dataset_root(str(cifar10_folder.parent), str(tmp_path)) == (
      os.path.join(str(cifar10_folder.parent), "cifar10"), False)
  missing = str(tmp_path / "nowhere.tar.gz")
  with pytest.raises(script.InputError, match=f"--data='{missing}' does not exist"):
    script.find_dataset_root(missing, str(tmp_path))
  text = tmp_path / "notes.txt"
  text.write_text("not an archive")
  with pytest.raises(script.InputError, match="notes.txt' is a file but not a tar archive"):
    script.find_dataset_root(str(text), str(tmp_path))
  (tmp_path / "flat" / "images").mkdir(parents=True)
  with pytest.raises(script.InputError, match="flat' has neither train/ and test/"):
    script.find_dataset_root(str(tmp_path / "flat"), str(tmp_path))
  archive = tmp_path / "wrong.tar.gz"  # A tarball of another layout: named, with its workdir.
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(tmp_path / "flat", arcname="other")
  with pytest.raises(script.InputError, match="archive --data='.*wrong.tar.gz' .*has neither"):
    script.find_dataset_root(str(archive), str(tmp_path / "unpacked"))
  # Through main: one line on stderr, exit status 2, the failure kept in the JSON.
  assert script.main([f"--data={missing}", f"--output_dir={tmp_path / 'out'}"]) == 2
  assert f"accelerator_run: error: --data='{missing}' does not exist." in capsys.readouterr().err
  report = json.loads((tmp_path / "out" / "accelerator_run.json").read_text())
  assert report["status"].startswith("failed: InputError"), report["status"]
  with pytest.raises(SystemExit):
    script.parse_args(["--data=x", "--output_dir=y", "--bench_precisions=float16"])


def test_compressed_schedule_keeps_the_paper_s_shape():
  """At the paper's length the compressed schedule is the paper's (warmup 1,564 steps, decays
  from epochs 101, 201, 226); shorter, the same fractions; the step-wise LR follows it."""
  script = load_script()
  from mixmo_tf.core import schedules
  paper = script.paper_config(script.CUTMIXMO_FLAGS)
  assert (paper.num_members, paper.batch_repetitions, paper.batch_size, paper.depth,
          paper.width, paper.mixing) == (2, 2, 64, 28, 10, "cutmix")
  steps_per_epoch = 50000 // 32
  full = script.compressed_schedule(paper, 300 * steps_per_epoch, 50000)
  assert full["warmup_steps"] == 1564 and full["base_lr"] == pytest.approx(0.025)
  assert full["milestone_steps"] == [(m - 1) * steps_per_epoch + 1 for m in (101, 201, 226)]
  short = script.compressed_schedule(paper, 3 * steps_per_epoch, 50000)
  assert short["warmup_steps"] == 16 and short["milestone_steps"] == [1563, 3125, 3515]
  schedule = schedules.WarmupPiecewiseSchedule(
      short["base_lr"], 1, warmup_steps=short["warmup_steps"],
      milestones=short["milestone_steps"], decay_factor=0.1)
  lr = lambda iterations: float(schedule(iterations))  # 0-based iterations: step k = it + 1.
  assert lr(0) == pytest.approx(0.025 / 16) and lr(15) == pytest.approx(0.025)
  assert lr(1561) == pytest.approx(0.025) and lr(1562) == pytest.approx(0.0025)
  assert lr(3514) == pytest.approx(2.5e-5) and lr(3513) == pytest.approx(2.5e-4)


def test_epoch_plan_fits_the_budget():
  import time
  script = load_script()
  args = script.parse_args(["--data=x", "--output_dir=y"])
  plan = script.plan_epochs(args, time.monotonic() + 400.0, step_s=0.05, steps_per_epoch=1000,
                            compile_s=30.0, eval_s=2.0, eval_first_s=10.0)
  # 400 s less 30 s compile, 8 s predict compile and a 20 s margin, at 52 s an epoch: 6 epochs.
  assert plan["epochs"] == 6 and plan["estimated_total_s"] <= 400.0, plan
  late = script.plan_epochs(args, time.monotonic() - 5.0, 0.05, 1000, 30.0, 2.0, 10.0)
  assert late["epochs"] == 1  # Always at least one epoch (the deadline callback cuts it short).
  capped = script.parse_args(["--data=x", "--output_dir=y", "--max_epochs=2"])
  assert script.plan_epochs(capped, time.monotonic() + 400.0, 0.05, 1000, 30.0, 2.0,
                            10.0)["epochs"] == 2


def test_deadline_callback_stops_fit_only_after_the_deadline():
  import time
  import types
  script = load_script()
  model = types.SimpleNamespace(stop_training=False)
  waiting = script.deadline_callback(time.monotonic() + 3600.0)
  waiting.set_model(model)
  waiting.on_train_batch_begin(0)
  assert not model.stop_training and not waiting.stopped
  late = script.deadline_callback(time.monotonic() - 1.0)
  late.set_model(model)
  late.on_train_batch_begin(5)
  assert model.stop_training and late.stopped
