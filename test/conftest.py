"""Test-session setup: ROS 2 isolation (host-only discovery, a domain id of our own), the shipped FastDDS
profile under the variable this distribution's Fast DDS reads, and the ament prefix of the venv, set before
anything calls rclpy.init() (subprocesses inherit them)."""
import os
import sys
from pathlib import Path

from dynadepth_ros import ros_compat

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)
os.environ.update(ros_compat.localhost_discovery_env(ros_compat.rclpy_major()))
# One domain per pytest run, so parallel runs on one host do not cross-talk (ids 1..101).
os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 101))
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(REPO / 'config' / 'fastdds_large_images.xml'))
ros_compat.export_fastdds_profile()
os.environ.setdefault('RCUTILS_LOGGING_BUFFERED_STREAM', '0')
