"""The tf.train checkpoint format's reads (TensorFlow): verification, listing, the state file."""

from __future__ import annotations

import glob
import os
from typing import List, Optional

import tensorflow as tf

from mixmo_tf.run_folder.array_checkpoints import step_of


def read_problem(prefix: str) -> Optional[str]:
  """Why TensorFlow cannot read every tensor of the checkpoint, or None."""
  try:
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except Exception as e:  # pylint: disable=broad-except  (any read failure means "damaged")
    return f"TensorFlow cannot read it ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
  return None


def listed(directory: str) -> List[str]:
  """Checkpoint prefixes, oldest first: from tf.train's state file, else the index files found
  (a state file being replaced this instant by a running run reads as damaged)."""
  if os.path.exists(os.path.join(directory, "checkpoint")):
    try:
      state = tf.train.get_checkpoint_state(directory)
    except Exception:  # pylint: disable=broad-except  (a damaged state file: fall back to a scan)
      state = None
    if state is not None and state.all_model_checkpoint_paths:
      return [p if os.path.isabs(p) else os.path.join(directory, p)
              for p in state.all_model_checkpoint_paths]
  found = [p[:-len(".index")] for p in glob.glob(os.path.join(directory, "*.index"))]
  return sorted(found, key=step_of)


def point_state_at(directory: str, prefix: str, all_prefixes: List[str]) -> None:
  """Rewrites the state file so that `prefix` is the latest (after damaged ones were set aside)."""
  tf.compat.v1.train.update_checkpoint_state(directory, prefix,
                                             all_model_checkpoint_paths=all_prefixes)


def load_network(network, prefix: str) -> None:
  """The network's variables (weights, BN statistics) from a checkpoint of the engine."""
  tf.train.Checkpoint(model=network).restore(prefix).expect_partial()
