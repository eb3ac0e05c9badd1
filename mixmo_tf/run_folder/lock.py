"""One training run per folder: an OS-level lock on `output_dir/.lock` (`run_folder.folder`).

Readers (`evaluate`, `export`) check it before reading a folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Optional

LOCK_FILE = ".lock"


class RunFolderError(RuntimeError):
  """The run folder cannot be used: held by another run, unwritable, or no intact checkpoint."""


def _lock_holder(path: str) -> str:
  try:
    with open(path) as f:
      holder = json.load(f)
    return (f"PID {holder['pid']} on host {holder['host']}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['start']))}")
  except (OSError, ValueError, KeyError):
    return "a process whose lock file cannot be read"


class RunLock:
  """An exclusive OS lock (flock) on `folder/.lock`, holding the owner's PID, host and start.

  The kernel releases it when the process ends, however it ends, so a run killed with SIGKILL
  leaves no obstacle behind.
  """

  def __init__(self, folder: str):
    self.path = os.path.join(folder, LOCK_FILE)
    self._file = open(self.path, "a+")
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.close()
      raise RunFolderError(
          f"{folder} is in use by another training run ({_lock_holder(self.path)}). Wait for it "
          "to finish, or use another --output_dir.") from None
    self._file.seek(0)
    self._file.truncate()
    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "start": time.time()},
              self._file)
    self._file.flush()

  def release(self) -> None:
    if not self._file.closed:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()


def running_holder(folder: str) -> Optional[str]:
  """Who trains in `folder` right now (PID, host, start), or None if no run holds its lock."""
  path = os.path.join(folder, LOCK_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _lock_holder(path)
    fcntl.flock(f, fcntl.LOCK_UN)
  return None


def check_not_running(folder: str, allow_running: bool = False) -> None:
  """Refuses to read a run that is still training (its files change under the reader)."""
  holder = None if allow_running else running_holder(folder)
  if holder:
    raise RunFolderError(f"{folder} is still training ({holder}): its checkpoints and models "
                         "may change while they are read. Wait for it to finish, or pass "
                         "--allow_running to read it anyway.")
