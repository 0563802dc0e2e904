"""ament_python install for dynadepth_ros (also a plain pip package: `pip install -e .`)."""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'dynadepth_ros'


def share(subdir, pattern):
    files = sorted(f for f in glob(os.path.join(subdir, pattern)) if os.path.isfile(f))
    return (os.path.join('share', PACKAGE, subdir), files)


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, PACKAGE + '.*']),
    package_data={PACKAGE: ['models/*.onnx', 'models/*.json', 'models/*.md']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        share('launch', '*'),
        share('config', '*'),
    ],
    install_requires=['setuptools'],
    extras_require={
        'test': ['pytest'],
        # the TensorRT backend's Python side (TensorRT itself comes from JetPack or NVIDIA's wheels): cuda-python
        # for the CUDA 12 TensorRT wheels and JetPack 6 (cuda-python 13 needs a CUDA 13 driver), and the fp16
        # model converter strongly typed TensorRT (10.12+, 11) builds fp16 engines from
        'tensorrt': ['cuda-python>=12.6,<13', 'onnxconverter-common>=1.16,<2'],
    },
    zip_safe=False,
    maintainer='dynadepth_ros developers',
    maintainer_email='dev@dynadepth.invalid',
    description='Metric monocular depth (CVPR 2024 dynamic-region method) as a ROS 2 node with training pipeline',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'depth_node = dynadepth_ros.node:main',
            'dynadepth-synth = dynadepth_ros.synth.cli:main',
            'dynadepth-eval-bag = dynadepth_ros.recording.eval_bag:main',
            'dynadepth-replay = dynadepth_ros.recording.replay:main',
            'dynadepth-model-info = dynadepth_ros.model_info:main',
            'dynadepth-build-engine = dynadepth_ros.engine_builder:main',
        ],
    },
)
