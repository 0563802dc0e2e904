"""The runtime package is what runs on the robot: importing any of its modules must not pull in torch
(a 1.3 s, 300 MB import that a Jetson image may not even have) nor the training package."""
import subprocess
import sys

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
