"""Networks of the training pipeline: ResNet encoder, depth, pose and residual-motion nets."""
from training.networks.depth import DepthDecoder, DepthExportModule, DepthNet, disp_to_depth
from training.networks.motion import ResidualMotionNet
from training.networks.pose import PoseNet, transformation_from_parameters
from training.networks.resnet import ResNetEncoder

__all__ = ['DepthDecoder', 'DepthExportModule', 'DepthNet', 'PoseNet', 'ResNetEncoder', 'ResidualMotionNet',
           'disp_to_depth', 'transformation_from_parameters']
