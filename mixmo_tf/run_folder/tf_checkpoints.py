"""The tf.train checkpoint format of the tf.distribute engine (TensorFlow), behind `CheckpointStore`
(its reads: `tf_format`).

`tf.train.CheckpointManager` writes `ckpt-N.index` / `.data-*` and the `checkpoint` state file;
`checkpoints.write_checksums` adds the `.sha256` sidecar. Under multi-worker training every worker
takes part in the (collective) save: the chief writes `checkpoints/`, the others throw-away copies
in `tmp_worker_<id>/`, deleted right after.
"""

from __future__ import annotations

import os
import shutil
from typing import Optional

import tensorflow as tf

from mixmo_tf.run_folder import checkpoints


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
