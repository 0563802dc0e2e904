"""The package builds as a ROS 2 package: `colcon build` in a scratch workspace installs the ament
index marker, package.xml, launch/ and config/ into share/dynadepth_ros and the executables into
lib/dynadepth_ros (where `ros2 run` looks)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
IGNORE = shutil.ignore_patterns('.venv', '.git', 'runs', 'out', 'data', 'build', 'install', 'log',
                                '__pycache__', '*.egg-info', '.pytest_cache', 'docs')


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    colcon = VENV_BIN / 'colcon'
    if not colcon.exists():
        pytest.fail(f'colcon is not installed in {VENV_BIN}; run `make setup`')
    ws = tmp_path_factory.mktemp('ws')
    shutil.copytree(REPO, ws / 'src' / 'dynadepth_ros', ignore=IGNORE)
    env = dict(os.environ, AMENT_PREFIX_PATH=sys.prefix, PATH=f'{VENV_BIN}:{os.environ["PATH"]}')
    res = subprocess.run([str(colcon), 'build', '--event-handlers', 'console_cohesion+'], cwd=ws, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f'colcon build failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}'
    return ws


def test_share_directory_has_launch_config_and_manifest(workspace):
    share = workspace / 'install' / 'dynadepth_ros' / 'share' / 'dynadepth_ros'
    assert (share / 'package.xml').is_file()
    for sub in ('launch', 'config'):
        src = sorted(p.name for p in (REPO / sub).iterdir() if p.is_file())
        assert src, f'{sub}/ is empty'
        installed = sorted(p.name for p in (share / sub).iterdir())
        assert installed == src, f'{sub}: installed {installed}, repository has {src}'
    marker = workspace / 'install' / 'dynadepth_ros' / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'dynadepth_ros'
    assert marker.is_file()


def test_executables_are_where_ros2_run_looks(workspace):
    lib = workspace / 'install' / 'dynadepth_ros' / 'lib' / 'dynadepth_ros'
    for exe in ('depth_node', 'dynadepth-synth', 'dynadepth-eval-bag', 'dynadepth-replay', 'dynadepth-model-info'):
        assert os.access(lib / exe, os.X_OK), f'{exe} missing from {lib}'


def test_installed_package_resolves_its_share_directory(workspace):
    """After sourcing the workspace, ament_index finds the installed share dir and the code imports from install/."""
    script = ('from ament_index_python.packages import get_package_share_directory as g; import dynadepth_ros; '
              'print(g("dynadepth_ros")); print(dynadepth_ros.__file__)')
    cmd = (f'export AMENT_PREFIX_PATH={sys.prefix}; . install/setup.bash; '
           f'{sys.executable} -c \'{script}\'')
    res = subprocess.run(['bash', '-c', cmd], cwd=workspace, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    share, module = res.stdout.split()
    assert Path(share) == workspace / 'install' / 'dynadepth_ros' / 'share' / 'dynadepth_ros'
    assert str(workspace / 'install') in module
