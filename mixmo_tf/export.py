"""`python -m mixmo_tf.export --run_dir=R`: the serving SavedModel of a finished run.

The SavedModel takes uint8 images [N, H, W, 3] (`images`) and returns {'probs', 'member_probs'},
normalisation inside, loading with TensorFlow alone (`mixmo_tf.deploy.tf_saved_model`).
"""

from __future__ import annotations

import sys

from absl import flags

from mixmo_tf import commands, runtime


def define_flags(flag_values) -> None:
  """The command's flags, on `flag_values` (absl's FLAGS when run as a module)."""
  kw = dict(flag_values=flag_values)
  flags.DEFINE_string("run_dir", None, "A finished training run's output_dir.", **kw)
  flags.DEFINE_string("export_dir", "", "Where to write the SavedModel (default "
                      "run_dir/saved_model).", **kw)
  flags.DEFINE_bool("allow_running", False, "Export a run that is still training.", **kw)
  flags.mark_flag_as_required("run_dir", flag_values=flag_values)


def main(argv, flag_values) -> None:
  """Writes the SavedModel and prints its path."""
  del argv
  from mixmo_tf.evaluation.predict import load_network
  from mixmo_tf.run_folder import RunFolder
  folder = RunFolder.open(flag_values.run_dir, flag_values.allow_running)
  if not runtime.tensorflow_importable():
    raise ValueError("Exporting a SavedModel needs TensorFlow, which is not importable here: "
                     "pip install 'tensorflow>=2.21,<2.22'.")
  import keras
  if keras.backend.backend() != "tensorflow":
    raise ValueError(f"Exporting runs on the TensorFlow backend; run it with "
                     f"KERAS_BACKEND=tensorflow (not {keras.backend.backend()}).")
  model_path = folder.model_path()
  if model_path is None:
    raise ValueError(f"--run_dir={folder.path!r} has no model.keras (train the run to the end "
                     "first).")
  from mixmo_tf.deploy import tf_saved_model
  network = load_network(model_path)
  export_dir = flag_values.export_dir or folder.file("saved_model")
  print(tf_saved_model.export_saved_model(network, folder.read_data_info(), export_dir,
                                          folder.read_config().ensemble))


if __name__ == "__main__":
  commands.run(sys.modules[__name__])
