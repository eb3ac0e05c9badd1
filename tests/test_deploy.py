"""Deployment (`python -m mixmo_tf.export`): every artifact, run in its own runtime, equals Keras.

One module fixture trains three tiny digits runs (WRN-10-1, 8x8): Cut-MixMo M = 2 under
mixed_bfloat16, Linear-MixMo M = 3 with the 'probs' ensemble rule, vanilla M = 1, and exports
them: the first in this process while Keras' policy is mixed_bfloat16 (so that its `.keras`
reloads computing in bfloat16, as on a bf16 machine), the second through the command under JAX
(which reruns itself on TensorFlow) into --export_dir, the third with the default formats. One
subprocess where `mixmo_tf` and `keras` cannot be imported then loads each artifact in its runtime
(TensorFlow's saved_model.load, ONNX Runtime, ai-edge-litert) and runs 64 test images through it,
and the README's three client blocks against the first run; this process compares everything with
the Keras network's probabilities through the evaluation path (`Predictor` on the unfolded
network, `evaluation.metrics`), float32, 1e-5 absolute.
"""

import json
import os
import pathlib

import keras
import numpy as np
import pytest

from mixmo_tf import commands, export, train
from mixmo_tf.data import datasets
from mixmo_tf.deploy import formats, precision, tf_onnx
from mixmo_tf.evaluation import metrics
from mixmo_tf.evaluation.predict import Predictor, load_network
from mixmo_tf.run_folder import RunFolder
from tests.helpers import run_python, run_without_modules

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
TOLERANCE = 1e-5
RUNTIMES = ("saved_model", "onnx", "litert")
COMMON = ["--dataset=digits", "--depth=10", "--width=1", "--batch_size=32", "--epochs=1",
          "--max_steps=20", "--seed=5", "--log_every_steps=1000"]
RUNS = {
    "mixmo2": ["--num_members=2", "--mixing=cutmix", "--batch_repetitions=2",
               "--precision=mixed_bfloat16"],
    "mixmo3": ["--num_members=3", "--mixing=linear", "--batch_repetitions=2", "--ensemble=probs",
               "--precision=float32"],
    "vanilla": ["--num_members=1", "--batch_repetitions=1", "--precision=float32"],
}

RUNTIME_SCRIPT = r'''
import json, os, sys
import numpy as np
spec = json.load(open(sys.argv[1]))
images = np.load(spec["images"])
import tensorflow as tf
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter

def saved_model(folder):
  serve = tf.saved_model.load(os.path.join(folder, "saved_model")).signatures["serving_default"]
  inputs = serve.structured_input_signature[1]
  contract = {"inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in inputs.items()},
              "outputs": sorted(serve.structured_outputs)}
  return lambda x: {k: v.numpy() for k, v in serve(images=tf.constant(x)).items()}, contract

def onnx(folder):
  session = ort.InferenceSession(os.path.join(folder, "model.onnx"))
  contract = {"inputs": {i.name: [i.type, i.shape] for i in session.get_inputs()},
              "outputs": {o.name: o.shape for o in session.get_outputs()}}
  names = ["probs", "member_probs"]
  return lambda x: dict(zip(names, session.run(names, {"images": x}))), contract

def litert(folder):
  interpreter = Interpreter(model_path=os.path.join(folder, "model.tflite"), num_threads=2)
  runner = interpreter.get_signature_runner("serving_default")
  contract = {"signatures": interpreter.get_signature_list(),
              "input": runner.get_input_details()["images"]["shape_signature"].tolist()}
  return runner, contract

results, contracts = {}, {}
for name, folder in spec["runs"].items():
  for runtime, load in (("saved_model", saved_model), ("onnx", onnx), ("litert", litert)):
    run, contracts[f"{name}/{runtime}"] = load(folder)
    for label, batch in (("1", images[:1]), ("64", images), ("7", images[7:14])):
      out = run(images=batch) if runtime == "litert" else run(batch)
      for key in ("probs", "member_probs"):
        results[f"{name}/{runtime}/{label}/{key}"] = np.asarray(out[key])
os.chdir(spec["readme_dir"])
for i, code in enumerate(spec["readme_blocks"]):
  scope = {"images": images}
  exec(compile(code, f"README.md block {i}", "exec"), scope)
  results[f"readme/{i}/probs"] = np.asarray(scope["probs"])
np.savez(spec["out"], **results)
loaded = sorted(m for m, v in sys.modules.items() if v is not None and
                m.split(".")[0] in ("mixmo_tf", "keras"))
json.dump({"contracts": contracts, "loaded": loaded}, open(spec["contracts"], "w"))
'''


def readme_blocks():
  """The ```python blocks of README.md's deployment section, as written."""
  text = README.read_text()
  start = text.index("## Deployment")
  section = text[start:text.index("\n## ", start + 1)]
  return [block.split("```")[0] for block in section.split("```python")[1:]]


def keras_reference(run, images):
  """(ensemble probs [N, K], member probs [N, M, K]) of the run's model.keras on uint8 `images`:
  the unfolded network (M stems) through the evaluation path, the run's --ensemble rule."""
  folder = RunFolder.open(str(run))
  logits = Predictor.from_network(load_network(folder.model_path()), folder.read_data_info())(
      images)
  return metrics.ensemble_probs(logits, folder.read_config().ensemble), metrics.softmax(logits)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """The three runs, trained and exported (see the module doc): {name: artifact folder}, with
  the JAX command's output under "jax_output" and the runs' folders under "runs"."""
  root = tmp_path_factory.mktemp("deploy")
  runs = {name: root / name for name in RUNS}
  for name, flags in RUNS.items():
    assert commands.call(train, COMMON + flags + [f"--output_dir={runs[name]}"]) == 0, name
  keras.config.set_dtype_policy("mixed_bfloat16")
  try:
    bf16 = load_network(str(runs["mixmo2"] / "model.keras"))
    assert not precision.computes_in_float32(bf16)  # The case the export must handle.
    assert commands.call(export, [f"--run_dir={runs['mixmo2']}"]) == 0
  finally:
    keras.config.set_dtype_policy("float32")
  folders = {"mixmo2": runs["mixmo2"], "mixmo3": root / "mixmo3_export",
             "vanilla": runs["vanilla"]}
  jax_output = run_python(["-m", "mixmo_tf.export", f"--run_dir={runs['mixmo3']}",
                           f"--export_dir={folders['mixmo3']}"], backend="jax")
  assert commands.call(export, [f"--run_dir={runs['vanilla']}",
                                "--format=saved_model,onnx,litert"]) == 0
  return dict(folders, runs=runs, jax_output=jax_output, root=root)


@pytest.fixture(scope="module")
def runtimes(exported):
  """The runtime subprocess' outputs {key: array} and its contracts (see RUNTIME_SCRIPT)."""
  root = exported["root"]
  images = datasets.digits_dataset().test.images[:64]
  np.save(root / "images.npy", images)
  readme_dir = root / "readme"
  (readme_dir / "runs").mkdir(parents=True)
  os.symlink(exported["mixmo2"], readme_dir / "runs" / "c10")
  spec = dict(images=str(root / "images.npy"), readme_dir=str(readme_dir),
              readme_blocks=readme_blocks(), out=str(root / "outputs.npz"),
              contracts=str(root / "contracts.json"),
              runs={name: str(exported[name]) for name in RUNS})
  (root / "spec.json").write_text(json.dumps(spec))
  (root / "runtimes.py").write_text(RUNTIME_SCRIPT)
  output = run_without_modules(["mixmo_tf", "keras"], [str(root / "runtimes.py"),
                                                       str(root / "spec.json")])
  assert "BLOCKED_MODULES_LOADED 0" in output, output[-3000:]
  with np.load(root / "outputs.npz") as saved:
    results = dict(saved)
  return results, json.loads((root / "contracts.json").read_text()), images


def test_every_artifact_equals_the_keras_model_in_its_own_runtime(exported, runtimes):
  results, info, images = runtimes
  assert info["loaded"] == []  # Neither mixmo_tf nor keras in the clients' process.
  for name, members in (("mixmo2", 2), ("mixmo3", 3), ("vanilla", 1)):
    probs, member_probs = keras_reference(exported["runs"][name], images)
    assert member_probs.shape == (64, members, 10)
    for runtime in RUNTIMES:
      got = results[f"{name}/{runtime}/64/probs"], results[f"{name}/{runtime}/64/member_probs"]
      assert got[0].shape == probs.shape and got[1].shape == member_probs.shape, (name, runtime)
      worst = max(np.abs(got[0] - probs).max(), np.abs(got[1] - member_probs).max())
      print(f"{name} {runtime}: max |difference| from Keras {worst:.2g}")
      assert worst <= TOLERANCE, (name, runtime, worst)
    if members > 1:  # The members are distinct predictors, not one output repeated.
      assert np.abs(member_probs[:, 0] - member_probs[:, 1]).max() > 100 * TOLERANCE
  # The M = 3 run's rule is 'probs' (mean softmax): the paper's 'logits' rule (softmax of the mean
  # logit, = softmax of the mean log-probability) gives other numbers, which the test would see.
  member_probs = keras_reference(exported["runs"]["mixmo3"], images)[1]
  mean_logit = metrics.softmax(np.log(member_probs).mean(axis=1))
  assert np.abs(mean_logit - results["mixmo3/onnx/64/probs"]).max() > 100 * TOLERANCE


def test_any_batch_size_gives_the_same_rows(runtimes):
  results, _, _ = runtimes
  for name, members in (("mixmo2", 2), ("mixmo3", 3), ("vanilla", 1)):
    for runtime in RUNTIMES:
      full = results[f"{name}/{runtime}/64/member_probs"]
      one, seven = (results[f"{name}/{runtime}/{n}/member_probs"] for n in ("1", "7"))
      assert one.shape == (1, members, 10) and seven.shape == (7, members, 10)
      np.testing.assert_allclose(one, full[:1], atol=TOLERANCE)
      np.testing.assert_allclose(seven, full[7:14], atol=TOLERANCE)
      assert results[f"{name}/{runtime}/7/probs"].shape == (7, 10)


def test_each_artifact_has_the_uint8_images_in_probs_out_contract(runtimes):
  _, info, _ = runtimes
  contracts = info["contracts"]
  for name, members in (("mixmo2", 2), ("mixmo3", 3), ("vanilla", 1)):
    assert contracts[f"{name}/saved_model"] == {"inputs": {"images": ["uint8", [None, 8, 8, 3]]},
                                                "outputs": ["member_probs", "probs"]}
    assert contracts[f"{name}/onnx"] == {
        "inputs": {"images": ["tensor(uint8)", ["N", 8, 8, 3]]},
        "outputs": {"probs": ["N", 10], "member_probs": ["N", members, 10]}}
    assert contracts[f"{name}/litert"] == {
        "signatures": {"serving_default": {"inputs": ["images"],
                                           "outputs": ["member_probs", "probs"]}},
        "input": [-1, 8, 8, 3]}


def test_litert_models_use_builtin_ops_only(exported):
  from ai_edge_litert import schema_py_generated as schema
  for name in RUNS:
    content = (exported[name] / "model.tflite").read_bytes()
    model = schema.Model.GetRootAsModel(content, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    custom = [c.CustomCode() for c in codes if c.CustomCode() or
              max(c.BuiltinCode(), c.DeprecatedBuiltinCode()) == schema.BuiltinOperator.CUSTOM]
    assert codes and custom == [], (name, custom)


def test_readme_clients_run_as_written_without_mixmo_tf_or_keras(exported, runtimes):
  results, _, images = runtimes
  text = README.read_text()
  assert text.index("## Using it") < text.index("## Deployment")
  blocks = readme_blocks()
  assert len(blocks) == 3
  for module, block in zip(("tensorflow", "onnxruntime", "ai_edge_litert"), blocks):
    code = [line for line in block.strip().splitlines() if not line.startswith("#")]
    assert len(code) == 3 and module in code[0], block  # Import, load, feed uint8 and read.
  probs, _ = keras_reference(exported["runs"]["mixmo2"], images)
  for i in range(3):
    np.testing.assert_allclose(results[f"readme/{i}/probs"], probs, atol=TOLERANCE)


def test_export_writes_where_asked_and_reruns_itself_on_tensorflow(exported):
  folder, run = exported["mixmo3"], exported["runs"]["mixmo3"]
  assert "subprocess on the TensorFlow backend" in exported["jax_output"]
  for name in ("saved_model", "model.onnx", "model.tflite"):
    assert (folder / name).exists() and str(folder / name) in exported["jax_output"]
    assert not (run / name).exists() or name == "saved_model"  # Training wrote saved_model/.
  leftovers = [p.name for p in exported["root"].rglob("*") if p.name.endswith((".tmp", ".old"))]
  assert leftovers == []


def test_missing_export_modules_and_bad_formats_are_one_line(exported, monkeypatch, capfd):
  run = exported["runs"]["vanilla"]
  assert commands.call(export, [f"--run_dir={run}", "--format=onnx,tflite"]) == 1
  importable = formats.importable
  monkeypatch.setattr(formats, "importable", lambda m: m != "tf2onnx" and importable(m))
  assert commands.call(export, [f"--run_dir={run}"]) == 1
  errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error: ")]
  assert len(errors) == 2, errors
  assert "--format=onnx,tflite" in errors[0]
  assert "tf2onnx" in errors[1] and 'pip install -e ".[export]"' in errors[1]


def test_an_artifact_that_disagrees_is_refused_and_the_previous_one_kept(exported, monkeypatch,
                                                                        capfd):
  run = exported["runs"]["vanilla"]
  before = (run / "model.onnx").read_bytes()
  run_onnx = tf_onnx.run
  monkeypatch.setattr(tf_onnx, "run", lambda *a, **k: {
      key: value + 1e-3 for key, value in run_onnx(*a, **k).items()})
  assert commands.call(export, [f"--run_dir={run}", "--format=onnx"]) == 1
  errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "model.onnx" in errors[0] and "differ" in errors[0], errors
  assert (run / "model.onnx").read_bytes() == before
  assert not (run / "model.onnx.tmp").exists()


def test_float32_network_rebuilds_a_bf16_backbone_network():
  from mixmo_tf import from_backbone
  keras.config.set_dtype_policy("mixed_bfloat16")
  try:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    network = from_backbone(backbone, num_members=2, num_classes=3)
  finally:
    keras.config.set_dtype_policy("float32")
  network = type(network).from_config(network.get_config())  # As reloaded: the config's policies.
  assert not precision.computes_in_float32(network)
  clone = precision.float32_network(network)
  assert precision.computes_in_float32(clone) and precision.float32_network(clone) is clone
  for source, target in zip(network.weights, clone.weights):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(source.value).astype(np.float32),
                                  keras.ops.convert_to_numpy(target.value))
  x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
  reduced, full = (keras.ops.convert_to_numpy(n([x, x], training=False)) for n in (network, clone))
  assert full.dtype == np.float32 and np.abs(reduced - full).max() < 0.1


def test_a_run_trained_on_jax_exports_here_and_serves_its_predictions(jax_session, tmp_path):
  """A run trained under JAX (tests/scripts/jax_session.py, TensorFlow absent there) exported
  where TensorFlow is: the SavedModel's `probs` on the digits test set equal the run's own
  network through the evaluation path (its model.keras and data_info.json; the 'logits' rule).
  That this network computes JAX's logits on TensorFlow is tests/test_no_tensorflow.py's check."""
  import tensorflow as tf
  run = jax_session.out / "ensemble" / "run_0"
  assert json.loads((run / "config.json").read_text())["backend"] == "jax"
  assert commands.call(export, [f"--run_dir={run}", f"--export_dir={tmp_path}",
                                "--format=saved_model"]) == 0
  serve = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
  test = datasets.digits_dataset().test
  probs = serve(images=tf.constant(test.images))["probs"].numpy()
  predictor = Predictor.from_network(load_network(str(run / "model.keras")),
                                     RunFolder.open(str(run)).read_data_info())
  logits = predictor(test.images)
  np.testing.assert_allclose(probs, metrics.ensemble_probs(logits, "logits"), atol=TOLERANCE)
