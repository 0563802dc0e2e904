"""dynadepth_ros: metric monocular depth for ROS 2 robots (runtime package; never imports torch)."""

__version__ = '0.1.0'
