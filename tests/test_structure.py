"""Repository structure: no import cycles in mixmo_tf, modest module sizes, citations inside."""

import ast
import pathlib
import re

from tests.conftest import REPO
from tests.helpers import run_without_tensorflow

PACKAGE = REPO / "mixmo_tf"


def _module_name(path: pathlib.Path) -> str:
  name = ".".join(path.relative_to(REPO).with_suffix("").parts)
  return name[:-len(".__init__")] if name.endswith(".__init__") else name


def import_graph():
  """{module: set of mixmo_tf modules it imports} (top-level and function-level imports)."""
  paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  packages = {m for m, p in paths.items() if p.name == "__init__.py"}
  graph = {m: set() for m in paths}
  for module, path in paths.items():
    for node in ast.walk(ast.parse(path.read_text())):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = module.split(".")[:len(module.split(".")) - node.level + (module in packages)]
          base = ".".join(parts + ([base] if base else []))
        targets = [base] + [f"{base}.{a.name}" for a in node.names]
      for target in targets:
        while target and target not in paths:
          target = target.rpartition(".")[0]
        # A package's __init__ re-exporting its own modules is not a design cycle.
        if target and target != module and not (target in packages and
                                                 module.startswith(target + ".")):
          graph[module].add(target)
  return graph, packages


def find_cycle(graph, skip=()):
  """One import cycle as a list of modules, or None (depth-first search)."""
  state = {}

  def visit(node, stack):
    state[node] = "open"
    for nxt in sorted(graph[node]):
      if nxt in skip:
        continue
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt, stack + [nxt])
        if found:
          return found
    state[node] = "done"
    return None

  for start in sorted(graph):
    if start not in state and start not in skip:
      found = visit(start, [start])
      if found:
        return found
  return None


def test_find_cycle_detects_a_planted_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


COMMANDS = {"mixmo_tf.train", "mixmo_tf.evaluate", "mixmo_tf.tables", "mixmo_tf.export"}


def test_no_import_cycles_and_no_library_module_imports_a_command():
  graph, packages = import_graph()
  assert "mixmo_tf.core.step" in graph["mixmo_tf.training.tf_engine"]  # real imports are seen
  assert find_cycle(graph, skip=packages) is None
  for module, targets in graph.items():
    if module not in COMMANDS:
      assert not targets & COMMANDS, (module, targets & COMMANDS)


def test_module_and_class_sizes():
  for path in PACKAGE.rglob("*.py"):
    assert len(path.read_text().splitlines()) <= 450, path
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ClassDef):
        assert node.end_lineno - node.lineno + 1 < 250, (path, node.name)


def test_only_modules_named_tf_need_tensorflow():
  """Every module whose name does not start with `tf` imports under JAX with TensorFlow, TFP and
  TFDS unimportable (the commands included); the `tf*` ones are the only ones that need it."""
  names = sorted(m for m in import_graph()[0]
                 if not m.rsplit(".", 1)[-1].startswith("tf"))
  tf_named = sorted(m for m in import_graph()[0] if m.rsplit(".", 1)[-1].startswith("tf"))
  assert {"mixmo_tf.training.tf_engine", "mixmo_tf.data.tfds"} <= set(tf_named)
  for module in tf_named:  # And each of them does need it: it imports TensorFlow (or tf2onnx).
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import)
                              else [ast.alias(node.module or "")])}
    assert imported & {"tensorflow", "tensorflow_datasets", "tf2onnx"}, module
  code = ("import importlib\n"
          f"for name in {names!r}:\n"
          "  importlib.import_module(name)\n"
          "import sys; print('IMPORTED', len([m for m in sys.modules if m.startswith('mixmo_tf')]))")
  out = run_without_tensorflow(["-c", code], backend="jax")
  assert "IMPORTED" in out and "BLOCKED_MODULES_LOADED 0" in out, out


def test_citations_point_inside_the_repository():
  # Written in pieces so that this file does not match itself.
  outside = re.compile("REFER" + r"ENCE(?:\.md)?\s+\d|PLATFORM" + "_NOTES|" + r"\.\./sha" +
                       r"red/(?!data)")
  method = (REPO / "docs" / "method.md").read_text()
  for path in list(REPO.glob("*.md")) + [p for d in ("mixmo_tf", "tests", "flags", "baselines",
                                                     "benchmarks", "docs")
                                         for p in (REPO / d).rglob("*")
                                         if p.suffix in (".py", ".md", ".flags")]:
    text = path.read_text()
    assert not outside.search(text), path
    for section in re.findall(r"docs/method\.md §(\d+(?:\.\d+)?)", text):
      # Every cited section exists as a heading or a labelled item of docs/method.md.
      assert re.search(rf"(^#+ {re.escape(section)}[ .]|\*\*{re.escape(section)}[ *])", method,
                       re.M), (path, section)


def test_nothing_loads_files_unsafely():
  """No code of the repository turns Keras' safe mode off or unpickles arrays (docs/method.md
  §20); written in pieces so that this file does not match itself."""
  unsafe = re.compile("safe_mode" + r"\s*=\s*False|enable_unsafe" + "_deserialization|"
                      "allow_pickle" + r"\s*=\s*True")
  for directory in ("mixmo_tf", "baselines", "benchmarks", "flags"):
    for path in (REPO / directory).rglob("*.py"):
      assert not unsafe.search(path.read_text()), path
  loads = [p for p in PACKAGE.rglob("*.py") if "load_model(" in p.read_text()]
  for path in loads:
    for line in path.read_text().splitlines():
      if "load_model(" in line and "def " not in line:
        assert "safe_mode=True" in line, (path, line)


def test_no_test_touches_a_private_member_of_the_package():
  """Tests use the package's public names only: no `module._name` of a mixmo_tf import, no
  `monkeypatch.setattr(module, "_name", ...)`."""
  for path in sorted((REPO / "tests").rglob("*.py")):
    tree = ast.parse(path.read_text())
    ours = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mixmo_tf"):
        ours |= {alias.asname or alias.name for alias in node.names}
      elif isinstance(node, ast.Import):
        ours |= {alias.asname or alias.name.split(".")[0] for alias in node.names
                 if alias.name.startswith("mixmo_tf")}
    for node in ast.walk(tree):
      private = None
      if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
          and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
          and node.value.id in ours):
        private = f"{node.value.id}.{node.attr}"
      elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "setattr" and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name) and node.args[0].id in ours
            and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_")
            and not str(node.args[1].value).startswith("__")):
        private = f"{node.args[0].id}.{node.args[1].value}"
      assert private is None, (path.name, node.lineno, private)
