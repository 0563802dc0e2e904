"""Set-up shared by the benchmark scripts that run the node over ROS 2 as plain programs (pytest's conftest.py
does this for the tests): the repository and test/ on sys.path, and, before anything imports rclpy, the venv as
ament prefix, localhost-only discovery, a domain id of their own and the FastDDS large-image profile.
Import it first: `import bench_env  # noqa: F401`."""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for path in (REPO / 'test', REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(150 + os.getpid() % 50))
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(REPO / 'config' / 'fastdds_large_images.xml'))

from dynadepth_ros.ros_compat import export_fastdds_profile  # noqa: E402  (Fast DDS 2.x reads another variable)

export_fastdds_profile()


def node_variant(text: str) -> tuple[str, list[str]]:
    """A depth_node variant for a side-by-side benchmark: 'LABEL=name:=value,name:=value' (or without 'LABEL=',
    then the parameters are the label) -> (label, ['-p', 'name:=value', ...]). An empty text is the defaults."""
    label, sep, params = text.partition('=') if '=' in text.split(':=')[0] else ('', '', text)
    pairs = [p.strip() for p in params.split(',') if p.strip()]
    for p in pairs:
        if ':=' not in p:
            raise ValueError(f'node parameter {p!r} is not name:=value')
    return (label or ','.join(pairs) or 'defaults'), [a for p in pairs for a in ('-p', p)]
