"""Test-session setup: ROS 2 isolation (localhost-only discovery, a domain id of our own) and the
ament prefix of the venv, set before anything imports rclpy."""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
# One domain per pytest run, so parallel runs on one host do not cross-talk (ids 1..101).
os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 101))
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(REPO / 'config' / 'fastdds_large_images.xml'))
os.environ.setdefault('RCUTILS_LOGGING_BUFFERED_STREAM', '0')
