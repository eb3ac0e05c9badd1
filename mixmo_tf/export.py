"""`python -m mixmo_tf.export --run_dir=R --format=saved_model,onnx,litert`: deployment artifacts.

Exports the folded network of a finished run (`model.keras`), whatever backend and precision
trained it, as a TensorFlow SavedModel (`saved_model/`, also TF Serving's format), an ONNX model
(`model.onnx`) and a LiteRT flatbuffer (`model.tflite`), in the run folder or --export_dir. Each
takes uint8 images [N, H, W, 3] (`images`) and returns `probs` (the ensemble, by the run's
--ensemble rule) and `member_probs` [N, M, K], normalisation inside; each is checked in its own
runtime before it replaces a previous one (`mixmo_tf.deploy.tf_export`). Exporting runs on the
TensorFlow backend: under another Keras backend the command reruns itself in a subprocess with
KERAS_BACKEND=tensorflow.
"""

from __future__ import annotations

import os
import subprocess
import sys

from absl import flags, logging

from mixmo_tf import commands, runtime
from mixmo_tf.deploy import formats as formats_lib

FLAG_NAMES = ("run_dir", "export_dir", "format", "allow_running")


def define_flags(flag_values) -> None:
  """The command's flags, on `flag_values` (absl's FLAGS when run as a module)."""
  kw = dict(flag_values=flag_values)
  flags.DEFINE_string("run_dir", None, "A finished training run's output_dir.", **kw)
  flags.DEFINE_string("export_dir", "", "The folder to write the artifacts in (default: run_dir, "
                      "where training writes saved_model/): saved_model/, model.onnx, "
                      "model.tflite.", **kw)
  flags.DEFINE_list("format", list(formats_lib.DEFAULT_FORMATS),
                    "Formats to export, any of saved_model (TensorFlow, TF Serving), onnx (ONNX "
                    "Runtime), litert (LiteRT, builtin ops); onnx needs the `export` extra: "
                    f"{formats_lib.INSTALL}.", **kw)
  flags.DEFINE_bool("allow_running", False, "Export a run that is still training.", **kw)
  flags.mark_flag_as_required("run_dir", flag_values=flag_values)


def rerun_under_tensorflow(flag_values) -> int:
  """Runs this command again in a subprocess on the TensorFlow backend; its exit status."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, KERAS_BACKEND="tensorflow")
  env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
  argv = [flag_values[name].serialize() for name in FLAG_NAMES]
  return subprocess.run([sys.executable, "-m", "mixmo_tf.export"] + argv, env=env,
                        check=False).returncode


def main(argv, flag_values) -> None:
  """Writes the artifacts and prints their paths, one a line."""
  del argv
  from mixmo_tf.run_folder import RunFolder
  folder = RunFolder.open(flag_values.run_dir, flag_values.allow_running)
  formats = formats_lib.parse_formats(flag_values.format)
  if not runtime.tensorflow_importable():
    raise ValueError("Exporting needs TensorFlow, which is not importable here: "
                     "pip install 'tensorflow>=2.21,<2.22'.")
  formats_lib.check_requirements(formats)
  model_path = folder.model_path()
  if model_path is None:
    raise ValueError(f"--run_dir={folder.path!r} has no model.keras (train the run to the end "
                     "first).")
  import keras
  if keras.backend.backend() != "tensorflow":
    logging.info("Keras runs on %s here: exporting in a subprocess on the TensorFlow backend.",
                 keras.backend.backend())
    status = rerun_under_tensorflow(flag_values)
    if status:
      sys.exit(status)
    return
  from mixmo_tf.deploy import tf_export
  from mixmo_tf.evaluation.predict import load_network
  paths = tf_export.export_network(load_network(model_path), folder.read_data_info(),
                                   flag_values.export_dir or folder.path, formats,
                                   folder.read_config().ensemble)
  for path in paths.values():
    print(path, flush=True)


if __name__ == "__main__":
  commands.run(sys.modules[__name__])
