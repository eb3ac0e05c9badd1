"""The tf.train checkpoint format of the tf.distribute engine (TensorFlow), behind `CheckpointStore`.

`tf.train.CheckpointManager` writes `ckpt-N.index` / `.data-*` and the `checkpoint` state file;
`checkpoints.write_checksums` adds the `.sha256` sidecar. Under multi-worker training every worker
takes part in the (collective) save: the chief writes `checkpoints/`, the others throw-away copies
in `tmp_worker_<id>/`, deleted right after.
"""

from __future__ import annotations

import glob
import os
import shutil
from typing import List, Optional

import tensorflow as tf

from mixmo_tf.run_folder import checkpoints
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


class TFCheckpointStore(checkpoints.CheckpointStore):
  """tf.train checkpoints of `checkpoint` (a tf.train.Checkpoint of network, optimizer, step)."""
  format = checkpoints.TF

  def __init__(self, directory: str, checkpoint, keep: int, guard, chief: bool = True,
               worker_dir: str = ""):
    super().__init__(directory, keep, guard)
    self.checkpoint, self.chief = checkpoint, chief
    self._manager = None
    self._manager_dir = directory if chief else worker_dir

  def _manager_for_saving(self):
    if self._manager is None:
      self._manager = tf.train.CheckpointManager(self.checkpoint, self._manager_dir,
                                                 max_to_keep=self.keep)
    return self._manager

  def restore(self) -> Optional[str]:
    """Verifies the newest checkpoint (damaged ones set aside), restores it; every worker reads
    the chief's `checkpoints/`."""
    if self.chief and os.path.isdir(self.directory):
      checkpoints.check_format(self.directory, checkpoints.TF)
      checkpoints.newest_intact_checkpoint(self.directory)
    latest = self.latest()
    if latest:
      self.checkpoint.restore(latest).assert_existing_objects_matched()
    self._manager_for_saving()  # Created after the verification: it reads the state file.
    return latest

  def save(self, step: int) -> str:
    manager = self._manager_for_saving()
    if not self.chief:
      path = manager.save(checkpoint_number=step)
      shutil.rmtree(manager.directory, ignore_errors=True)
      return path

    def write():
      path = manager.save(checkpoint_number=step)
      checkpoints.write_checksums(path)
      checkpoints.remove_beyond(self.directory, 0)  # Sidecars of checkpoints the manager deleted.
      return path
    # A kill between the save and its checksums leaves a checkpoint without a sidecar, which
    # resume then verifies by reading every tensor.
    return self.guard(f"checkpoints/ckpt-{step}", write)
