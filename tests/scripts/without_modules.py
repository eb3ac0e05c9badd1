"""Runs a module or script with some modules unimportable, as on a machine without them.

    python tests/scripts/without_modules.py -m mixmo_tf.train --flagfile=...
    python tests/scripts/without_modules.py path/to/script.py ARGS...
    python tests/scripts/without_modules.py -c "python code" ARGS...

The blocked top-level modules are WITHOUT_MODULES (comma-separated; default: tensorflow,
tensorflow_probability, tensorflow_datasets). Each is set to None in sys.modules, which
`importlib.util.find_spec` reports as "not installed" (torch._dynamo and TensorFlow probe that way)
and which makes any import of it or its submodules raise ImportError; a finder first on
sys.meta_path refuses them too. At exit it prints one line, `BLOCKED_MODULES_LOADED <n>`, the
number of such modules loaded (0 unless something bypassed the block). The one copy of this hook
in the tests: `tests.helpers.run_without_modules` and `run_without_tensorflow` run it.
"""

import atexit
import importlib.abc
import os
import runpy
import sys

DEFAULT = "tensorflow,tensorflow_probability,tensorflow_datasets"
BLOCKED = tuple(n for n in os.environ.get("WITHOUT_MODULES", DEFAULT).split(",") if n)


class _Refuse(importlib.abc.MetaPathFinder):

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"{name} is not importable here (tests/scripts/without_modules.py)")
    return None


def _report():
  loaded = [m for m, module in sys.modules.items()
            if m.split(".")[0] in BLOCKED and module is not None]
  print(f"BLOCKED_MODULES_LOADED {len(loaded)}", flush=True)


if __name__ == "__main__":
  sys.meta_path.insert(0, _Refuse())
  sys.modules.update(dict.fromkeys(BLOCKED))
  atexit.register(_report)
  args = sys.argv[1:]
  if args[:1] == ["-c"]:
    sys.argv = ["-c"] + args[2:]
    exec(compile(args[1], "<-c>", "exec"), {"__name__": "__main__"})
  elif args[:1] == ["-m"]:
    sys.argv = [args[1]] + args[2:]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
  else:
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")
