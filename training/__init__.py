"""dynadepth_ros training pipeline (torch): `python -m training <command>` (see training/__main__.py).

Imports dynadepth_ros (metrics, geometry, dataset readers, model format); dynadepth_ros never
imports this package.
"""
