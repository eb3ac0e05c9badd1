"""`RunFolder`: the one place that knows a run folder's layout, for training and for every reader.

    flags.txt            the configuration as absl flags (rerunnable with --flagfile)
    config.json          the resolved Config (engine, strategy and precision included)
    data_info.json       the dataset's shape, classes and normalisation (evaluation, export)
    checkpoints/         ckpt-N of the run's engine, each with ckpt-N.sha256 (`checkpoints`)
    tensorboard/         summaries (where TensorFlow is importable)
    history.json         one entry per epoch (the same schema on both engines)
    model.keras          the trained network; model_folded.keras, its one-stem inference form
    saved_model/         the serving SavedModel (TensorFlow backend; float32)
    model.onnx, model.tflite   ONNX and LiteRT exports, written by `python -m mixmo_tf.export`
    results.json         the final metrics, written last: its presence means the run is complete

Rerunning the same command resumes from the newest intact checkpoint; other flags that change the
network, the data or the step -> epoch mapping are refused before anything is touched;
--overwrite starts over. One training run at a time holds `.lock`; every file is replaced
atomically (`atomic`); a failed write (full disk, lost permission) stops the run with one line
(`RunFolderError`) naming the last good checkpoint.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Callable, Dict, List, Optional, Tuple

from absl import logging

from mixmo_tf.config import RESUME_KEYS, Config
from mixmo_tf.data.info import DataInfo
from mixmo_tf.run_folder import checkpoints as checkpoints_lib
from mixmo_tf.run_folder.atomic import (ASIDE_SUFFIX, TMP_SUFFIX, recover, save_keras_atomic, write_json_atomic,
                                        write_text_atomic)
from mixmo_tf.run_folder.lock import LOCK_FILE, RunFolderError, RunLock, check_not_running

FLAGS_FILE = "flags.txt"
CONFIG = "config.json"
DATA_INFO = "data_info.json"
HISTORY = "history.json"
RESULTS = "results.json"
MODEL = "model.keras"
MODEL_FOLDED = "model_folded.keras"
SAVED_MODEL = "saved_model"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
FINAL_MODELS = (MODEL, MODEL_FOLDED)


def _write_errors() -> tuple:
  """What a failed write raises: OSError, and TensorFlow's OpError once TensorFlow is loaded."""
  import sys
  tf = sys.modules.get("tensorflow")
  return (OSError, tf.errors.OpError) if tf is not None and hasattr(tf, "errors") else (OSError,)


def read_json(path: str):
  """A JSON file's value; ValueError naming the file when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise ValueError(f"{path} is missing.") from None
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}).") from None


def _recover_if_writable(path: str) -> None:
  """`atomic.recover`, skipped in a read-only copy of a run (then what is there is read)."""
  try:
    recover(path)
  except OSError:
    pass


class RunFolder:
  """One run's output folder, as seen by one worker (only the chief keeps what it writes)."""

  def __init__(self, path: str, chief: bool = True, worker: int = 0,
               lock: Optional[RunLock] = None):
    self.path = path
    self.chief = chief
    self.worker = worker
    self.lock = lock
    self.created = False  # Made by this run's `prepare` (then `abandon` may remove it).

  # -- Opening ----------------------------------------------------------------------------------

  @classmethod
  def prepare(cls, config: Config, chief: bool = True, worker: int = 0) -> "RunFolder":
    """For training: takes the folder's lock, checks that a run already there is compatible
    (--overwrite deletes it) and clears what an interrupted write left. Raises ValueError (bad
    flags, unwritable) or RunFolderError (another run holds the folder) before changing anything."""
    path = config.output_dir
    if not chief:
      os.makedirs(path, exist_ok=True)
      return cls(path, chief, worker)
    if not config.overwrite:
      cls(path).check_resumable(config)
    created = not os.path.exists(path)
    try:
      os.makedirs(path, exist_ok=True)
      lock = RunLock(path)
    except OSError as e:
      raise ValueError(f"--output_dir={path!r} is not writable: {e}") from None
    try:
      if config.overwrite:
        for entry in os.scandir(path):
          if entry.name != LOCK_FILE:
            shutil.rmtree(entry.path) if entry.is_dir() else os.remove(entry.path)
      folder = cls(path, chief, worker, lock)
      folder.created = created
      folder.remove_partial_writes()
    except BaseException:
      lock.release()
      raise
    return folder

  @classmethod
  def open(cls, path: str, allow_running: bool = False) -> "RunFolder":
    """For reading a run (evaluate, export, tables, ensembles): ValueError when `path` is not a
    run folder, RunFolderError while a run still trains in it (unless `allow_running`); an
    interrupted replacement of its SavedModel is completed first (`atomic.recover`)."""
    if not os.path.isdir(path):
      raise ValueError(f"{path!r} is not a directory (expected a run's --output_dir).")
    folder = cls(path)
    if not os.path.exists(folder.file(CONFIG)):
      raise ValueError(f"{path!r} is not a run folder: it has no {CONFIG}.")
    check_not_running(path, allow_running)
    if not allow_running:  # No writer is at work: complete an interrupted directory replacement.
      _recover_if_writable(folder.file(SAVED_MODEL))
    return folder

  def release(self) -> None:
    """Releases the folder's lock (the process ending does it too)."""
    if self.lock is not None:
      self.lock.release()

  def abandon(self) -> None:
    """Releases the lock after a start that failed (bad data, a network that cannot be built):
    a folder this run created and left with nothing but its lock file is removed, so a refused
    start leaves no trace."""
    self.release()
    if self.created and self.chief:
      entries = os.listdir(self.path) if os.path.isdir(self.path) else []
      if entries in ([], [LOCK_FILE]):
        shutil.rmtree(self.path, ignore_errors=True)

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  @property
  def checkpoint_dir(self) -> str:
    return self.file(CHECKPOINTS)

  def check_resumable(self, config: Config) -> None:
    """Raises ValueError naming the flags that differ from the run already in the folder."""
    if not os.path.exists(self.file(CONFIG)):
      return
    previous = self.read_config_dict()
    differing = [k for k in RESUME_KEYS if k in previous and previous[k] != getattr(config, k)]
    if differing:
      details = ", ".join(f"--{k}: {previous[k]!r} there, {getattr(config, k)!r} now"
                          for k in differing)
      raise ValueError(f"{self.path} holds a run with other flags ({details}). Use another "
                       "--output_dir, or --overwrite to delete that run.")

  def remove_partial_writes(self) -> None:
    """Deletes what an interrupted write left: TF's `*_temp*` checkpoint folders, `*.tmp` files
    and folders; completes an interrupted directory replacement."""
    recover(self.file(SAVED_MODEL))
    patterns = [os.path.join(self.checkpoint_dir, "*_temp*"), self.file("*" + TMP_SUFFIX),
                self.file("*" + TMP_SUFFIX + ".keras"),
                os.path.join(self.checkpoint_dir, "*" + TMP_SUFFIX)]
    for pattern in patterns:
      for path in glob.glob(pattern):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

  def guarded(self, name: str, write: Callable[[], object]):
    """Runs `write`; a failure (full disk, permission lost, read-only file system) becomes one
    RunFolderError naming the folder, the file and the free space."""
    try:
      return write()
    except _write_errors() as e:
      self.remove_partial_writes()
      try:
        free = f"{shutil.disk_usage(self.path).free / 2**20:.1f} MiB free"
      except OSError:
        free = "free space unknown"
      reason = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)
      raise RunFolderError(
          f"Cannot write {name} in {self.path} ({reason.splitlines()[0]}; {free}). The last "
          f"good checkpoint stays the latest: {self.latest_checkpoint()}.") from None

  # -- Run description --------------------------------------------------------------------------

  def write_run_files(self, config: Config, info: DataInfo, backend: str) -> None:
    """flags.txt, config.json (with the Keras `backend` training runs on) and data_info.json:
    what readers need to rebuild the run and to know its final artifacts."""
    if not self.chief:
      return
    config_text = json.dumps(dict(json.loads(config.to_json()), backend=backend), indent=2,
                             sort_keys=True)
    for name, text in ((FLAGS_FILE, config.as_flagfile()), (CONFIG, config_text),
                       (DATA_INFO, info.to_json())):
      self.guarded(name, lambda: write_text_atomic(self.file(name), text))

  def _read_json(self, name: str):
    return read_json(self.file(name))

  def read_config_dict(self) -> dict:
    """config.json as saved (keys of older versions kept)."""
    values = self._read_json(CONFIG)
    if not isinstance(values, dict):
      raise ValueError(f"{self.file(CONFIG)} does not hold a JSON object.")
    return values

  def read_config(self) -> Config:
    """The run's Config (fields this version does not know are ignored, missing ones default)."""
    try:
      return Config.from_dict(self.read_config_dict())
    except (TypeError, ValueError) as e:
      raise ValueError(f"{self.file(CONFIG)} does not describe a run: {e}") from None

  def read_data_info(self) -> DataInfo:
    if not os.path.exists(self.file(DATA_INFO)):
      raise ValueError(f"{self.file(DATA_INFO)} is missing: cannot normalise the test images.")
    try:
      with open(self.file(DATA_INFO)) as f:
        return DataInfo.from_json(f.read())
    except (OSError, ValueError, TypeError, KeyError) as e:
      raise ValueError(f"{self.file(DATA_INFO)} is unreadable ({type(e).__name__}: {e}).") \
          from None

  # -- History and results ----------------------------------------------------------------------

  def load_history(self, step: int) -> List[Dict]:
    """history.json entries up to `step` (later ones belong to steps the checkpoint lost)."""
    if not os.path.exists(self.file(HISTORY)):
      return []
    return [h for h in self._read_json(HISTORY) if h["step"] <= step]

  def save_history(self, history: List[Dict]) -> None:
    if self.chief:
      self.guarded(HISTORY, lambda: write_json_atomic(self.file(HISTORY), history))

  def write_results(self, results: Dict) -> None:
    """results.json, written after every other final artifact: the completion record."""
    if self.chief:
      self.guarded(RESULTS, lambda: write_json_atomic(self.file(RESULTS), results))

  def retract_results(self) -> None:
    """Removes the completion record before more training: a finished run resumed with more
    epochs is not complete again until it writes a new one."""
    if self.chief and os.path.exists(self.file(RESULTS)):
      self.guarded(RESULTS, lambda: os.remove(self.file(RESULTS)))

  def read_results(self) -> Dict:
    return self._read_json(RESULTS)

  def is_complete(self) -> bool:
    """Whether the run finished: its completion record (results.json) exists."""
    return os.path.exists(self.file(RESULTS))

  def final_artifacts(self) -> Tuple[str, ...]:
    """What a finished run holds besides checkpoints and history, in the order it is written:
    the two .keras models, the serving SavedModel where the run trains on TensorFlow
    (config.json's "backend"), then the completion record."""
    try:
      backend = self.read_config_dict().get("backend")
    except ValueError:
      backend = None
    return FINAL_MODELS + ((SAVED_MODEL,) if backend == "tensorflow" else ()) + (RESULTS,)

  def missing_artifacts(self) -> List[str]:
    """The final artifacts not (yet) in the folder, the completion record last. A directory
    set aside by an interrupted replacement counts as present (`atomic.recover` restores it)."""
    return [name for name in self.final_artifacts()
            if not (os.path.exists(self.file(name))
                    or os.path.isdir(self.file(name) + ASIDE_SUFFIX))]

  # -- Models -----------------------------------------------------------------------------------

  def write_models(self, network, info: DataInfo, ensemble: str, saved_model: bool) -> None:
    """model.keras, model_folded.keras (one stem, same function) and, with `saved_model`, the
    serving SavedModel, each replaced atomically."""
    if not self.chief:
      return
    for name, net in ((MODEL, network), (MODEL_FOLDED, network.folded())):
      self.guarded(name, lambda: save_keras_atomic(net, self.file(name)))
    if saved_model:  # Served in float32 whatever precision trained it, as `export` writes it.
      from mixmo_tf.deploy import tf_saved_model
      from mixmo_tf.deploy.precision import folded_float32
      self.guarded(SAVED_MODEL, lambda: tf_saved_model.export_saved_model(
          folded_float32(network), info, self.file(SAVED_MODEL), ensemble=ensemble))

  def model_path(self) -> Optional[str]:
    return self.file(MODEL) if os.path.exists(self.file(MODEL)) else None

  # -- Checkpoints ------------------------------------------------------------------------------

  def array_checkpoints(self, groups, keep: int) -> checkpoints_lib.ArrayCheckpointStore:
    """The Keras engine's store: `groups()` gives {name: [variables]} to save and restore."""
    return checkpoints_lib.ArrayCheckpointStore(self.checkpoint_dir, groups, keep, self.guarded)

  def tf_checkpoints(self, checkpoint, keep: int):
    """The tf.distribute engine's store of a tf.train.Checkpoint."""
    from mixmo_tf.run_folder.tf_checkpoints import TFCheckpointStore
    return TFCheckpointStore(self.checkpoint_dir, checkpoint, keep, self.guarded, self.chief,
                             self.file(f"tmp_worker_{self.worker}"))

  def latest_checkpoint(self) -> Optional[str]:
    """The newest checkpoint prefix of either format (not verified), or None."""
    return checkpoints_lib.latest_checkpoint(self.checkpoint_dir)

  def load_network_weights(self, network, prefix: Optional[str] = None) -> str:
    return checkpoints_lib.load_network_weights(network, self.checkpoint_dir, prefix)

  # -- Summaries --------------------------------------------------------------------------------

  def summary_writer(self):
    """TensorBoard scalars in tensorboard/ where TensorFlow is importable, else a no-op writer."""
    from mixmo_tf.run_folder.summaries import summary_writer
    return summary_writer(self.file(TENSORBOARD if self.chief else "tmp_tensorboard"))


def log_resumed(path: Optional[str], step: int) -> None:
  if path:
    logging.info("Resumed from %s at step %d.", path, step)
