"""Runs a module or script with TensorFlow, TFP and TFDS unimportable, as on a machine without them.

    python tests/scripts/no_tensorflow.py -m mixmo_tf.train --flagfile=...
    python tests/scripts/no_tensorflow.py path/to/script.py ARGS...
    python tests/scripts/no_tensorflow.py -c "python code" ARGS...

A finder first on sys.meta_path refuses `tensorflow`, `tensorflow_probability`,
`tensorflow_datasets` and their submodules (ImportError), and the three names are set to None in
sys.modules, which `importlib.util.find_spec` reports as "not installed" (torch._dynamo asks it
while Keras loads on the torch backend). At exit it prints one line, `TENSORFLOW_MODULES <n>`, the
number of such modules loaded (0 unless something bypassed it).
"""

import atexit
import importlib.abc
import runpy
import sys

BLOCKED = ("tensorflow", "tensorflow_probability", "tensorflow_datasets")


class _Refuse(importlib.abc.MetaPathFinder):

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"{name} is not importable here (tests/scripts/no_tensorflow.py)")
    return None


def _report():
  loaded = [m for m, module in sys.modules.items()
            if m.split(".")[0] in BLOCKED and module is not None]
  print(f"TENSORFLOW_MODULES {len(loaded)}", flush=True)


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
