"""package.xml declares what the tests need: every third-party module imported under test/ maps (by the table
below) to a rosdep key listed as a depend / exec_depend / test_depend, or, for modules without a rosdep key,
to a pip package that package.xml names in a comment. A new import fails here until the table and package.xml
say how it is installed."""
import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# top-level import name -> rosdep key
ROSDEP_KEYS = {
    'pytest': 'python3-pytest',
    'numpy': 'python3-numpy',
    'cv2': 'python3-opencv',
    'yaml': 'python3-yaml',
    'onnxruntime': 'python3-onnxruntime-pip',   # a rosdep key that installs the pip wheel
    'rclpy': 'rclpy',
    'builtin_interfaces': 'builtin_interfaces',
    'diagnostic_msgs': 'diagnostic_msgs',
    'lifecycle_msgs': 'lifecycle_msgs',
    'rcl_interfaces': 'rcl_interfaces',
    'rosgraph_msgs': 'rosgraph_msgs',
    'sensor_msgs': 'sensor_msgs',
    'std_msgs': 'std_msgs',
    'visualization_msgs': 'visualization_msgs',
}
# top-level import name -> pip package, for modules rosdep has no key for
PIP_ONLY = {'onnx': 'onnx', 'rosbags': 'rosbags', 'torch': 'torch'}
LOCAL = {'dynadepth_ros', 'training'} | {p.stem for p in (ROOT / 'test').rglob('*.py')}


def _package_xml():
    root = ET.parse(ROOT / 'package.xml').getroot()
    keys = {e.text.strip() for tag in ('depend', 'exec_depend', 'test_depend', 'build_depend')
            for e in root.iter(tag)}
    comments = (ROOT / 'package.xml').read_text()
    return keys, comments


def _third_party_imports() -> dict[str, set[str]]:
    """top-level module -> test files importing it (absolute imports anywhere in the file)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / 'test').rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split('.')[0]
                if top not in sys.stdlib_module_names and top not in LOCAL and top != '__future__':
                    found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


def test_every_third_party_test_import_is_a_declared_dependency():
    keys, text = _package_xml()
    imports = _third_party_imports()
    assert {'pytest', 'numpy', 'rclpy', 'torch'} <= set(imports)       # the scan really sees the imports
    unmapped = {m: sorted(f) for m, f in imports.items() if m not in ROSDEP_KEYS and m not in PIP_ONLY}
    assert not unmapped, f'add these modules to the tables in {Path(__file__).name} and to package.xml: {unmapped}'
    missing = sorted(f'{m} -> {ROSDEP_KEYS[m]}' for m in imports if m in ROSDEP_KEYS and ROSDEP_KEYS[m] not in keys)
    assert not missing, f'package.xml does not declare: {missing}'
    pip_comment = [c for c in text.split('<!--')[1:] if 'pip' in c.split('-->')[0]]
    unnamed = sorted(m for m in imports if m in PIP_ONLY
                     and not any(f' {PIP_ONLY[m]}' in c.split('-->')[0] for c in pip_comment))
    assert not unnamed, f'pip-only test dependencies not named in a package.xml comment: {unnamed}'
