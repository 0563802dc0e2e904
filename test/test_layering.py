"""The runtime package is what runs on the robot: importing any of its modules must not pull in torch
(a 1.3 s, 300 MB import that a Jetson image may not even have) nor the training package."""
import ast
import subprocess
import sys
from pathlib import Path

CODE = '''
import importlib, pkgutil, sys
import dynadepth_ros
names = [m.name for m in pkgutil.walk_packages(dynadepth_ros.__path__, 'dynadepth_ros.')]
for name in names:
    importlib.import_module(name)
bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m == 'training' or m.startswith('training.'))
print(len(names), 'modules;', 'imported:', bad)
sys.exit(1 if bad else 0)
'''


def test_no_runtime_module_imports_torch_or_training():
    res = subprocess.run([sys.executable, '-c', CODE], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert int(res.stdout.split()[0]) > 30   # it really walked the package


# ---------------------------------------------------------------------------- the import graph, read from the source
# Built with ast from every import statement, top-level and inside functions alike (a function-level import is
# still a dependency; it only defers the failure), absolute and relative.
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ('dynadepth_ros', 'training')
# what evaluates the method or runs the whole pipeline: above the stage runner, never below it
EVALUATION_MODULES = ('training.evaluate', 'training.evaluate_dsa', 'training.object_trace', 'training.pipeline')


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → source file of every module of the packages (a package by its __init__.py)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob('*.py')):
            parts = list(path.relative_to(root).with_suffix('').parts)
            if parts[-1] == '__init__':
                parts.pop()
            out['.'.join(parts)] = path
    return out


def _known(name: str, modules) -> str | None:
    """The longest prefix of dotted `name` that is one of `modules` (None outside the packages)."""
    parts = name.split('.')
    while parts:
        if '.'.join(parts) in modules:
            return '.'.join(parts)
        parts.pop()
    return None


def _from_source(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The dotted module a `from ... import` statement in `module` reads from (relative ones resolved)."""
    if not node.level:
        return node.module or ''
    base = module.split('.') if path.name == '__init__.py' else module.split('.')[:-1]
    base = base[:len(base) - node.level + 1]
    return '.'.join(base + ([node.module] if node.module else []))


def imported_modules(module: str, path: Path, modules) -> set[str]:
    """The package modules `module`'s source imports: `import a.b`, `from a import b` (a itself, or a.b when b is
    a module) and relative `from .x import y`; for a dotted name outside `modules`, its longest prefix in them."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {t for t in (_known(a.name, modules) for a in node.names) if t}
        elif isinstance(node, ast.ImportFrom):
            source = _from_source(module, path, node)
            target = _known(source, modules)
            if target is None:
                continue
            # `from package import module` imports that module (its package is only initialised on the way,
            # as for any submodule); other names are read from `target`
            submodules = {f'{source}.{a.name}' for a in node.names} & modules.keys()
            out |= submodules
            if len(submodules) < len(node.names):
                out.add(target)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module → the package modules it imports (itself left out; the packages above an imported module, which
    Python initialises on the way, are not counted)."""
    modules = package_modules(root)
    return {m: imported_modules(m, p, modules) - {m} for m, p in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle [a, b, ..., a] through each strongly connected group of modules that import each other."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):                      # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:              # a shortest way back to the group's first module, through the group
        start = min(group)
        paths, seen = {start: [start]}, {start}
        queue = [start]
        while queue:
            v = queue.pop(0)
            for w in sorted(graph[v] & group):
                if w == start:
                    cycles.append(paths[v] + [start])
                    queue = []
                    break
                if w not in seen:
                    seen.add(w)
                    paths[w] = paths[v] + [w]
                    queue.append(w)
    return cycles


def private_uses(root: Path = ROOT) -> list[str]:
    """'file:line: what' for each private name (one leading underscore) of a package module used by another
    module: `from m import _name`, or `m._name` / `Name._name` where m is an imported package module and Name
    something imported from one (a class's private method, say)."""
    modules = package_modules(root)
    found = []
    for module, path in modules.items():
        rel = path.relative_to(root)
        tree = ast.parse(path.read_text(), str(path))
        bound = {}             # local name → the dotted name it stands for (a package module, or a thing in one)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _known(alias.name, modules):
                        bound[alias.asname or alias.name.split('.')[0]] = alias.name if alias.asname else \
                            alias.name.split('.')[0]
            elif isinstance(node, ast.ImportFrom):
                source = _from_source(module, path, node)
                home = _known(source, modules)
                if home is None:
                    continue
                for alias in node.names:
                    bound[alias.asname or alias.name] = f'{source}.{alias.name}'
                    if _private(alias.name) and home != module:
                        found.append(f'{rel}:{node.lineno}: from {source} import {alias.name}')
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                owner = '.'.join([bound[value.id]] + chain[::-1])
                if _known(owner, modules) not in (None, module):
                    found.append(f'{rel}:{node.lineno}: {owner}.{node.attr}')
    return found


def _private(name: str) -> bool:
    return name.startswith('_') and not (name.startswith('__') and name.endswith('__'))


def test_no_import_cycles_among_the_package_modules():
    graph = import_graph()
    # it reads top-level and function-level imports (the runner finds the stage registry inside run_stage)
    assert len(graph) > 100 and 'training.stages.runner' in graph['training.stages.scene']
    assert 'training.stages' in graph['training.stages.runner']
    cycles = import_cycles(graph)
    assert not cycles, 'modules that import each other (move what they share below both):\n' + '\n'.join(
        ' -> '.join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a', 'd'}, 'd': set(), 'e': {'e'}}
    assert import_cycles(graph) == [['a', 'b', 'c', 'a']]


def test_the_graph_and_the_private_name_finder_read_each_form(tmp_path):
    files = {
        'dynadepth_ros/__init__.py': '',
        'dynadepth_ros/a.py': '_x = 1\nclass C:\n    def _m(self): ...\n_y = C()._m()\n',
        'dynadepth_ros/sub/__init__.py': 'from . import c\n',
        'dynadepth_ros/sub/c.py': 'def f():\n    from ..a import _x\n    from .. import a as aa\n    return aa._x\n',
        'training/__init__.py': '',
        'training/b.py': ('import dynadepth_ros.a\nfrom dynadepth_ros.a import C\n'
                          'v = dynadepth_ros.a._x, C._m, C().ok\n'),
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph['dynadepth_ros.sub'] == {'dynadepth_ros.sub.c'}
    assert graph['dynadepth_ros.sub.c'] == {'dynadepth_ros.a'}     # `from .. import a`: the module a
    assert graph['training.b'] == {'dynadepth_ros.a'}
    assert sorted(private_uses(tmp_path)) == [
        'dynadepth_ros/sub/c.py:2: from dynadepth_ros.a import _x', 'dynadepth_ros/sub/c.py:4: dynadepth_ros.a._x',
        'training/b.py:3: dynadepth_ros.a.C._m', 'training/b.py:3: dynadepth_ros.a._x']


def test_no_private_name_is_used_across_modules():
    uses = private_uses()
    assert not uses, ('private names used by another module (make them public where they are shared):\n'
                      + '\n'.join(uses))


def test_the_stage_runner_imports_no_stage_nor_evaluation():
    """The runner is infrastructure the stages import; what it reaches (directly or through other modules)
    holds no registered stage, no evaluation and not the pipeline above it."""
    from training.stages import STAGES

    graph = import_graph()
    runner = 'training.stages.runner'
    forbidden = {spec.module for spec in STAGES.values()} | set(EVALUATION_MODULES)
    reached, todo, via = set(), [runner], {runner: [runner]}
    while todo:
        v = todo.pop()
        for w in sorted(graph[v]):
            if w not in reached:
                reached.add(w)
                via[w] = via[v] + [w]
                todo.append(w)
    assert graph[runner], 'the runner imports nothing? the graph is not read'
    bad = sorted(reached & forbidden)
    assert not bad, 'the stage runner reaches ' + '; '.join(' -> '.join(via[m]) for m in bad)


# ROS 2 Python packages: what differs between ROS 2 distributions (rclpy, generated message code, ROS tools)
ROS_PACKAGES = ('rclpy', 'rosidl', 'rcl_', 'rmw', 'rpyutils', 'launch', 'ros2', 'rosbag2_py', 'message_filters',
                'cv_bridge', 'tf2', 'builtin_interfaces', 'unique_identifier_msgs', 'type_description_interfaces',
                'service_msgs', 'action_msgs', 'lifecycle_msgs', 'ament_index_python')


def external_imports(path: Path) -> set[str]:
    """Top-level names of the modules outside our packages that `path` imports, at module or function level."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split('.')[0])
    return out - set(PACKAGES)


def _ros_package(name: str) -> bool:
    return name.startswith(ROS_PACKAGES) or name.endswith(('_msgs', '_srvs', '_interfaces'))


def test_training_reaches_no_ros2_python_package():
    """The training tests run on one ROS 2 distribution only (`make test-ros` leaves them out, test/conftest.py):
    that holds while nothing training imports, directly or through dynadepth_ros, at module or function level,
    is a ROS 2 Python package (rosbags, the pure-Python bag library, is not one)."""
    modules = package_modules()
    graph = import_graph()
    reached, todo = set(), [m for m in modules if m == 'training' or m.startswith('training.')]
    while todo:
        m = todo.pop()
        if m not in reached:
            reached.add(m)
            todo.extend(graph[m])
    assert len(reached) > 60   # it really walked training and what it imports
    bad = sorted(f'{m}: {name}' for m in reached for name in external_imports(modules[m]) if _ros_package(name))
    assert not bad, f'training reaches ROS 2 Python packages, so its tests depend on the distribution: {bad}'
    assert _ros_package('rclpy') and _ros_package('sensor_msgs') and not _ros_package('rosbags')
