"""What every command shares: flags on a FlagValues of its own, and one line for a user's mistake.

Each command module (`train`, `evaluate`, `tables`, `export`, `baselines.ensemble`) defines
`define_flags(flag_values)` and `main(argv, flag_values)`. Run as `python -m`, absl's `app.run`
parses the global FLAGS (with --flagfile, --help and --helpfull); `call(module, argv)` runs the
same `main` in-process on a fresh FlagValues (tests). Either way `main_with_one_line_errors`
turns the errors that mean "bad input" (ValueError, RunFolderError, a NaN stop) into one line on
stderr and exit status 1, never a traceback; MIXMO_TF_TRACEBACK=1 shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, List

TRACEBACK_VAR = "MIXMO_TF_TRACEBACK"


def user_errors() -> tuple:
  """The exceptions that mean a user's mistake or an unusable input, each with its message."""
  from mixmo_tf.run_folder.lock import RunFolderError
  from mixmo_tf.training.progress import NonFiniteLossError
  return (ValueError, RunFolderError, NonFiniteLossError)


def report(error: BaseException) -> None:
  """The error's message as one block on stderr (its own lines kept), prefixed with 'error: '."""
  sys.stderr.flush()
  print(f"error: {error}", file=sys.stderr, flush=True)


def main_with_one_line_errors(main: Callable) -> Callable:
  """`main` whose user errors end the process with one message and exit status 1."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except user_errors() as error:
      if os.environ.get(TRACEBACK_VAR):
        raise
      report(error)
      sys.exit(1)
  return wrapped


def run(module) -> None:
  """`python -m` entry: define the module's flags on absl's FLAGS, then app.run its main."""
  from absl import app, flags
  module.define_flags(flags.FLAGS)
  app.run(main_with_one_line_errors(lambda argv: module.main(argv, flags.FLAGS)))


def call(module, argv: List[str]) -> int:
  """Runs `module.main` in-process as `python -m module argv...` would; returns the exit status
  (flag errors: 2, user errors: 1 with the message on stderr)."""
  from absl import flags, logging
  logging.use_absl_handler()  # INFO lines to stderr, as app.run sets them up.
  logging.set_verbosity(logging.INFO)
  flag_values = flags.FlagValues()
  module.define_flags(flag_values)
  try:
    rest = flag_values([module.__name__] + list(argv))
  except flags.Error as error:
    report(error)
    return 2
  try:
    main_with_one_line_errors(module.main)(rest, flag_values)
  except SystemExit as exit_:
    return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
  return 0
