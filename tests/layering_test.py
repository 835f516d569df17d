"""The packages import each other only downwards, and nothing in a circle.

The layers, lowest first:

  storage      crash-safe small files on local disk and gs://: imports
               nothing of ours.
  coatnet_tf   the model library: imports nothing of ours.
  artifacts    one module per artifact type: imports coatnet_tf and
               storage only.
  serving      the gRPC client and local server: imports artifacts (and
               coatnet_tf, storage).
  components   the components: one package each (components/<name>/) that
               imports artifacts, coatnet_tf, serving, configs and the
               shared modules directly under components/ (base, cli,
               preprocessing), never another component's package; the
               shared modules import no component package.
  configs      the paper recipes as data: import components' configs.
  pipeline     on top: imports any of the above.

bench/ and tests/ may import anything; nothing else imports them. Every
`.py` file is read with `ast` (nothing is imported, so the check is fast and
sees imports inside functions too), and the module graph must have no
cycles.
"""

from __future__ import annotations

import ast
import os
import sys
import tempfile
import textwrap

from absl.testing import absltest

from tests import source_tree

# What each top-level package may import besides itself.
ALLOWED = {
    "storage": set(),
    "coatnet_tf": set(),
    "artifacts": {"coatnet_tf", "storage"},
    "serving": {"artifacts", "coatnet_tf", "storage"},
    "components": {"artifacts", "coatnet_tf", "serving", "configs", "storage"},
    "configs": {"artifacts", "coatnet_tf", "components", "storage"},
    "pipeline": {
        "artifacts",
        "coatnet_tf",
        "serving",
        "components",
        "configs",
        "storage",
    },
}
# Importing anything of ours is fine here.
FREE = {"bench", "tests", "tools", "conftest", "setup"}
# Modules directly under components/ every component may use.
SHARED_COMPONENT_MODULES = {"base", "cli", "preprocessing"}
SKIP_DIRS = {"third_party", "__pycache__", "node_modules"}


def module_names(root: str) -> dict[str, str]:
    """Module name -> file for every .py under `root`."""
    modules = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in SKIP_DIRS and not d.startswith((".", "bazel-"))
        )
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts:
                modules[".".join(parts)] = path
    return modules


def imports_of(path: str, module: str, is_package: bool) -> list[str]:
    """The absolute names a file imports (`from a import b` gives a.b: the
    module a.b, or the name b of module a; the caller resolves which)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    package = module if is_package else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph(root: str) -> dict[str, set[str]]:
    """Module -> the modules of the tree it imports."""
    modules = module_names(root)
    graph = {}
    for module, path in modules.items():
        is_package = path.endswith("__init__.py")
        found = set()
        for name in imports_of(path, module, is_package):
            # The longest prefix that is a module of the tree.
            parts = name.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != module:
                found.add(".".join(parts))
        graph[module] = found
    return graph


def _component_package(module: str) -> str | None:
    """`components.<name>` for a module inside a component's package."""
    parts = module.split(".")
    if parts[0] != "components" or len(parts) < 2:
        return None
    if len(parts) == 2 and parts[1] in SHARED_COMPONENT_MODULES:
        return None
    return ".".join(parts[:2])


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """The imports that break the layering rules, as sentences."""
    problems = []
    for module, targets in sorted(graph.items()):
        layer = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other in FREE and layer not in FREE:
                problems.append(f"{module} imports {target} (test/bench code)")
                continue
            if layer in FREE or layer not in ALLOWED or other == layer:
                if layer == other == "components":
                    mine = _component_package(module)
                    theirs = _component_package(target)
                    if theirs is not None and theirs != mine:
                        problems.append(
                            f"{module} imports {target}: components import "
                            "no other component (share it through "
                            "artifacts/)"
                        )
                continue
            if other not in ALLOWED.get(layer, set()):
                problems.append(
                    f"{module} imports {target}: {layer} may import only "
                    f"{sorted(ALLOWED[layer]) or 'nothing of ours'}"
                )
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module
    (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def check_tree(root: str) -> list[str]:
    """Every layering violation and import cycle under `root`."""
    graph = import_graph(root)
    problems = layer_violations(graph)
    for scc in cycles(graph):
        problems.append("import cycle: " + " -> ".join(scc))
    return problems


class LayeringTest(absltest.TestCase):
    def test_the_tree_is_layered(self):
        problems = check_tree(source_tree.root())
        self.assertEqual(problems, [], "\n".join(problems))

    def test_the_tree_is_read(self):
        # A checker that finds no modules would pass vacuously.
        graph = import_graph(source_tree.root())
        self.assertIn("artifacts.examples", graph)
        self.assertIn("artifacts.core", graph["components.base"])


class CheckerTest(absltest.TestCase):
    """The checker itself, on small synthetic trees."""

    def _tree(self, files: dict[str, str]) -> str:
        root = tempfile.mkdtemp(dir=self.create_tempdir().full_path)
        for path, text in files.items():
            full = os.path.join(root, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as f:
                f.write(textwrap.dedent(text))
        return root

    def _clean(self) -> dict[str, str]:
        return {
            "coatnet_tf/__init__.py": "",
            "coatnet_tf/model.py": "import tensorflow\n",
            "artifacts/__init__.py": "",
            "artifacts/core.py": "import json\n",
            "artifacts/model.py": (
                "from artifacts import core\nimport coatnet_tf.model\n"
            ),
            "serving/__init__.py": "",
            "serving/servables.py": "from artifacts import model\n",
            "components/__init__.py": "",
            "components/base.py": "from artifacts.core import Artifact\n",
            "components/trainer/__init__.py": "",
            "components/trainer/component.py": (
                "from components import base\nfrom artifacts import model\n"
            ),
            "components/pusher/__init__.py": "",
            "components/pusher/component.py": (
                "from components import base\nfrom serving import servables\n"
            ),
            "pipeline/__init__.py": "",
            "pipeline/runner.py": (
                "from components.trainer import component\n"
                "from components.pusher import component as p\n"
            ),
            "tests/__init__.py": "",
            "tests/x_test.py": "from pipeline import runner\n",
        }

    def test_a_clean_tree_passes(self):
        self.assertEqual(check_tree(self._tree(self._clean())), [])

    def test_a_component_importing_another_is_reported(self):
        files = self._clean()
        files["components/pusher/component.py"] += (
            "from components.trainer import component\n"
        )
        problems = check_tree(self._tree(files))
        self.assertLen(problems, 1)
        self.assertIn("components.pusher.component imports", problems[0])
        self.assertIn("no other component", problems[0])

    def test_imports_inside_functions_count(self):
        files = self._clean()
        files["coatnet_tf/model.py"] += (
            "def f():\n    from artifacts import core\n"
        )
        problems = check_tree(self._tree(files))
        self.assertEqual(
            problems,
            [
                "coatnet_tf.model imports artifacts.core: coatnet_tf may "
                "import only nothing of ours"
            ],
        )

    def test_serving_importing_a_component_is_reported(self):
        files = self._clean()
        files["serving/servables.py"] += "from components import cli\n"
        files["components/cli.py"] = "import os\n"
        problems = check_tree(self._tree(files))
        self.assertEqual(
            problems,
            [
                "serving.servables imports components.cli: serving may "
                "import only ['artifacts', 'coatnet_tf', 'storage']"
            ],
        )

    def test_shared_component_modules_import_no_component(self):
        files = self._clean()
        files["components/base.py"] += "from components.trainer import x\n"
        files["components/trainer/x.py"] = "import os\n"
        problems = check_tree(self._tree(files))
        self.assertLen(problems, 1)
        self.assertIn(
            "components.base imports components.trainer.x", problems[0]
        )

    def test_product_code_importing_tests_is_reported(self):
        files = self._clean()
        files["pipeline/runner.py"] += "from tests import x_test\n"
        problems = check_tree(self._tree(files))
        self.assertLen(problems, 2)  # The import and the cycle it closes.
        self.assertIn("pipeline.runner imports tests.x_test", problems[0])

    def test_a_cycle_within_a_layer_is_reported(self):
        files = self._clean()
        files["components/trainer/a.py"] = "from components.trainer import b\n"
        files["components/trainer/b.py"] = "def f():\n    from . import a\n"
        problems = check_tree(self._tree(files))
        self.assertEqual(
            problems,
            ["import cycle: components.trainer.a -> components.trainer.b"],
        )


if __name__ == "__main__":
    sys.exit(absltest.main())
