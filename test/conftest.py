"""Test-session setup: ROS 2 isolation (host-only discovery, a domain id of our own), the shipped FastDDS
profile under the variable this distribution's Fast DDS reads, and the ament prefix of the venv, set before
anything calls rclpy.init() (subprocesses inherit them). Also the `training` marker: the tests of training/,
which does not depend on the ROS 2 distribution (test_layering checks that it imports no ROS 2 Python package),
so CI runs them once (`make test`) and not again on the second distribution (`make test-ros`)."""
import fcntl
import os
import sys
import tempfile
from pathlib import Path

import pytest

from dynadepth_ros import ros_compat

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)
os.environ.update(ros_compat.localhost_discovery_env(ros_compat.rclpy_major()))


def claim_domain_id(first: int = 1, last: int = 101) -> tuple[int, object]:
    """A ROS domain id no other pytest run on this host holds: the first id whose lock file we can lock, and the
    open lock file, which holds the claim until this process exits (the kernel drops the lock even on SIGKILL).
    A domain derived from the pid alone let two concurrent runs share a domain about once in a hundred, and
    then each run's nodes saw the other's topics."""
    lock_dir = Path(tempfile.gettempdir())
    for domain in range(first, last + 1):
        f = open(lock_dir / f'dynadepth-test-domain-{domain}.lock', 'a')
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        return domain, f
    raise RuntimeError(f'all ROS domain ids {first}..{last} are held by other test runs on this host')


# One domain per pytest run, so parallel runs on one host do not cross-talk.
if 'ROS_DOMAIN_ID' not in os.environ:
    _domain, _DOMAIN_CLAIM = claim_domain_id()
    os.environ['ROS_DOMAIN_ID'] = str(_domain)
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(REPO / 'config' / 'fastdds_large_images.xml'))
ros_compat.export_fastdds_profile()
os.environ.setdefault('RCUTILS_LOGGING_BUFFERED_STREAM', '0')

# Test modules of training/ (torch, rosbags; no ROS 2 Python package): `-m "not training"` leaves them out.
TRAINING_MODULES = ('test_training_', 'test_quantize', 'test_scene_model')


def pytest_configure(config):
    config.addinivalue_line('markers', 'training: a test of training/, independent of the ROS 2 distribution')


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name.startswith(TRAINING_MODULES):
            item.add_marker(pytest.mark.training)
