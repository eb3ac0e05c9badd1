"""Exports a MixMo network in the deployment formats (TensorFlow backend), each artifact checked.

`export_network` folds the network, rebuilt in float32 if it computes in reduced precision
(`precision.folded_float32`), wraps it in the uint8 serving function
(`tf_serving.ServingModule`) and writes the requested artifacts in one folder: `saved_model/`,
`model.onnx`, `model.tflite` (`formats.FORMATS`). Before an artifact replaces a previous one
(atomically: a folder through `run_folder.atomic.replace_directory`, a file through `os.replace`)
it runs in its own runtime on a few random images and must give the serving function's outputs
(`CHECK_TOLERANCE`): a converter that changed the function stops the export with one line.
"""

from __future__ import annotations

import os
import shutil
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from mixmo_tf.deploy import formats as formats_lib
from mixmo_tf.deploy import tf_litert, tf_onnx, tf_saved_model
from mixmo_tf.deploy.precision import folded_float32
from mixmo_tf.deploy.tf_serving import ServingModule
from mixmo_tf.run_folder.atomic import replace_directory

CHECK_IMAGES = 5  # A batch size other than 1, 2 or 4 shows a batch dimension fixed by mistake.
CHECK_TOLERANCE = 1e-4  # Absolute, on probabilities; conversions measured within 3e-6.


def check_outputs(name: str, expected: Dict[str, np.ndarray], got: Dict[str, np.ndarray],
                  tolerance: float = CHECK_TOLERANCE) -> float:
  """The largest |difference| of `got` from `expected`; ValueError naming the artifact if an
  output's shape differs or a difference exceeds `tolerance`."""
  worst = 0.0
  for key, want in expected.items():
    value = np.asarray(got[key])
    if value.shape != want.shape:
      raise ValueError(f"{name}: output {key!r} has shape {value.shape}, expected {want.shape}.")
    worst = max(worst, float(np.max(np.abs(value.astype(np.float64) - want))))
  if not worst <= tolerance:
    raise ValueError(f"{name}: its outputs differ from the network's by {worst:.3g} (more than "
                     f"{tolerance:g}) on {len(next(iter(expected.values())))} random images; "
                     "the previous artifact, if any, is kept.")
  return worst


def run_artifact(name: str, runtime: str, run, *args):
  """`run(*args)`; ValueError naming the artifact and the runtime's first line if it fails."""
  try:
    return run(*args)
  except Exception as e:  # pylint: disable=broad-except  (any runtime failure: one line)
    raise ValueError(f"{name} does not run in {runtime}: {type(e).__name__}: "
                     f"{' '.join(str(e).split())[:300]}") from None


def export_network(network, info, export_dir: str, formats: Sequence[str] = ("saved_model",),
                   ensemble: str = "logits", check: bool = True) -> Dict[str, str]:
  """Writes the `formats` artifacts of `network` (DataInfo `info`, --ensemble rule `ensemble`)
  into `export_dir`; returns {format: path}. With `check`, each artifact is run in its runtime
  first and must match the serving function (`check_outputs`)."""
  formats = formats_lib.parse_formats(formats)
  formats_lib.check_requirements(formats)
  os.makedirs(export_dir, exist_ok=True)
  paths = formats_lib.artifact_paths(export_dir, formats)
  module = ServingModule(folded_float32(network), info, ensemble)
  images = np.random.default_rng(0).integers(0, 256, (CHECK_IMAGES,) + module.image_shape,
                                             dtype=np.uint8)
  expected = {k: v.numpy() for k, v in module.serve(tf.constant(images)).items()}

  if "onnx" in formats:
    model = tf_onnx.convert(module)
    if check:
      check_outputs(paths["onnx"], expected,
                    run_artifact(paths["onnx"], "ONNX Runtime", tf_onnx.run, model, images))
    formats_lib.write_bytes_atomic(paths["onnx"], model)
  if not {"saved_model", "litert"} & set(formats):
    return paths
  # LiteRT converts from the SavedModel loaded back (`tf_litert`): staged beside its final place.
  saved_model = paths.get("saved_model", os.path.join(export_dir, "saved_model"))
  staged = tf_saved_model.save_staged(module, saved_model)
  try:
    if check and "saved_model" in formats:
      serve = tf.saved_model.load(staged).signatures["serving_default"]
      got = {k: v.numpy() for k, v in serve(images=tf.constant(images)).items()}
      check_outputs(saved_model, expected, got)
    if "litert" in formats:
      model = tf_litert.convert(staged)
      if check:
        check_outputs(paths["litert"], expected,
                      run_artifact(paths["litert"], "LiteRT", tf_litert.run, model, images))
      formats_lib.write_bytes_atomic(paths["litert"], model)
    if "saved_model" in formats:
      replace_directory(staged, saved_model)
  finally:
    shutil.rmtree(staged, ignore_errors=True)
  return paths
