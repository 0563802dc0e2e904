"""Stage-1 model: scene depth + camera pose + residual (pixel-wise object) motion, self-supervised.

Reference pipeline §1–2, with the reference's bugs left out (§6): motion is a pixel displacement
added after the perspective division, out-of-view samples are masked instead of clamped, the pose
uses axis-angle, colour-augmented frames feed the networks while the loss compares un-augmented ones.

Phases (the shared training loop runs them in this order, each for its own number of steps):
- ``rigid``: depth + pose, motion fixed to zero (monodepth2 with auto-masking).
- ``motion``: the motion net alone (depth and pose run without gradient); its flow is masked only
  where the rigid rendering is empty; no sparsity.
- ``joint``: everything, with the reference's motion masking (a view-s flow counts only where
  ‖m‖ ≥ its mean over the rendered pixels and ≥ 1e-5, i.e. most of the scene is assumed static), two-direction
  consistency (motion only where both directions have some) and the sparsity prior.

Per source s ∈ {-1, +1}: the reference frame is rendered rigidly into view s (z-buffered forward
splat), the motion net compares that rendering with frame s and returns a residual flow in view-s
pixels, which is carried back to the reference grid and added to the rigid reprojection when the
source is warped for the photometric loss.

Batch (from the training datasets): ``frames`` float32 [B,3,3,H,W] in [0,1] (t-1, t, t+1; network
input, colour-augmented), ``frames_raw`` same without colour augmentation (loss targets; defaults
to ``frames``), ``K``/``inv_K`` float32 [B,3,3] at H x W, ``odom_distance`` float32 [B,2] metres
travelled t-1→t and t→t+1 (NaN unknown; optional). Optional and only logged, never used in a loss:
``gt_depth`` float32 [B,1,H,W] (0 invalid), ``moving`` [B,H,W] (1 on independently moving objects).
Other keys are ignored.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.geometry import render_reference_in_source, transfer_flow_to_reference, warp
from training.losses import (edge_aware_smoothness, min_reprojection_loss, motion_sparsity,
                             relative_pose_loss, translation_magnitude_loss)
from training.networks.depth import DepthExportModule, DepthNet, disp_to_depth
from training.networks.motion import ResidualMotionNet
from training.networks.pose import PoseNet

PHASES = ('rigid', 'motion', 'joint')
OFFSETS = (-1, 1)  # source frames relative to the reference; index in `frames` is offset + 1


@dataclass
class SceneModelConfig:
    """Stage-1 model and loss settings (one home for each value; loaded from the YAML ``model`` section).

    The phase schedule (which of PHASES run, for how many steps, at which lr) belongs to the stage
    config; ``SceneModel.trainable(phase)`` says what each phase optimises.
    """

    encoder_depth: int = 18                # ResNet depth of the depth encoder (18, 34, 50)
    width_mult: float = 1.0                # channel multiplier of depth encoder + decoder
    pose_encoder_depth: int = 18
    pose_width_mult: float = 1.0
    pretrained_depth_encoder: str = ''     # local torchvision ImageNet .pth ('' = random init)
    pretrained_pose_encoder: str = ''
    min_depth: float = 0.1                 # metres (disparity 1)
    max_depth: float = 100.0               # metres (disparity 0)
    # Depth the untrained net predicts (disparity-head bias). With odometry the pose must reach metres
    # per frame; starting depth near the scene's typical depth keeps depth and motion consistent from
    # step 0 instead of growing both ~100x from monodepth2's ~0.2 (which takes thousands of steps).
    init_depth: float = 10.0
    scales: tuple[int, ...] = (0, 1, 2, 3)
    ssim_weight: float = 0.85
    smoothness_weight: float = 1e-3        # times 1/2^s at scale s, averaged over scales
    # The reference uses 0.02 on motion added before the perspective division (pixel shift = m/Z)
    # next to a photometric term about 4x ours (3·SSIM + 2·L1); in pixels that is ~0.02·Z/4, i.e.
    # 0.05 at Z = 10 m. Much more (0.2) erased a correctly found moving object in our tests.
    sparsity_weight: float = 0.05
    odometry_weight: float = 0.1           # odometry term (metres); 0 disables metric scale
    # 'pose': the whole relative pose T_ref→src when poses are known (translation vector + rotation,
    # losses.relative_pose_loss; falls back to the length for samples with a distance only);
    # 'distance': |‖t‖ - d| only (speed-only odometry).
    odometry_supervision: str = 'pose'
    odometry_rotation_weight: float = 10.0  # metres per radian in the 'pose' term
    rotation_scale: float = 0.01           # pose output multipliers (small initial motion)
    translation_scale: float = 0.1         # 0.01 (monodepth2) is too slow to reach metres per frame
    motion_channels: int = 32
    motion_radius: int = 4
    splat_upsample: int = 3                # sub-pixels per axis in the z-buffer splat
    occlusion_tolerance: float = 0.05      # relative depth slack when carrying flow back to the reference
    flow_threshold: float = 1.0            # px: (Σ|flow_prev| + Σ|flow_next|)/2 ≥ this marks a dynamic pixel
    flow_epsilon: float = 0.01             # px: predicted flows with |fx|+|fy| below this are set to 0

    def __post_init__(self):
        self.scales = tuple(int(s) for s in self.scales)
        if 0 not in self.scales:
            raise ValueError(f'scales must include 0 (full resolution), got {self.scales}')
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f'need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}')
        for name in ('smoothness_weight', 'sparsity_weight', 'odometry_weight'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        if self.odometry_supervision not in ('pose', 'distance'):
            raise ValueError(f"odometry_supervision must be 'pose' or 'distance', got {self.odometry_supervision!r}")
        if not self.min_depth < self.init_depth < self.max_depth:
            raise ValueError(f'init_depth {self.init_depth} must lie inside (min_depth, max_depth) = '
                             f'({self.min_depth}, {self.max_depth})')
        if self.splat_upsample < 1:
            raise ValueError(f'splat_upsample must be >= 1, got {self.splat_upsample}')

    @classmethod
    def from_dict(cls, values: dict) -> SceneModelConfig:
        """Build from a (YAML) mapping; unknown keys are an error naming the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f'unknown scene model setting(s) {unknown}; valid settings: {sorted(names)}')
        return cls(**values)


def dynamic_pixel_mask(flow_prev: torch.Tensor, flow_next: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """bool [B,1,H,W]: (Σ_c |flow_prev| + Σ_c |flow_next|) / 2 ≥ threshold (px), the reference's definition
    of a pixel with independent motion. flows: float32 [B,2,H,W] reference-frame pixels."""
    return (flow_prev.abs().sum(1, keepdim=True) + flow_next.abs().sum(1, keepdim=True)) / 2 >= threshold


class SceneModel(nn.Module):
    """Depth (``depth``), pose (``pose``) and residual motion (``motion``) networks with the stage-1 loss.

    ``decoder``: the depth decoder's style (training.networks.depth: 'elu_reflect', or 'relu_zero' for stage 4's
    final.decoder); not part of SceneModelConfig, which stage 1 hashes.

    ``forward(batch, phase)`` is ``loss(batch, phase)`` so the model can be wrapped in
    DistributedDataParallel (use ``find_unused_parameters=True``: the rigid and motion phases leave
    sub-modules without gradient).
    """

    def __init__(self, config: SceneModelConfig | None = None, decoder: str = 'elu_reflect'):
        super().__init__()
        self.config = cfg = config or SceneModelConfig()
        self.depth = DepthNet(cfg.encoder_depth, cfg.width_mult, cfg.min_depth, cfg.max_depth, cfg.scales,
                              cfg.init_depth, decoder)
        self.pose = PoseNet(cfg.pose_encoder_depth, cfg.pose_width_mult, cfg.rotation_scale, cfg.translation_scale)
        self.motion = ResidualMotionNet(cfg.motion_channels, cfg.motion_radius)
        if cfg.pretrained_depth_encoder:
            self.depth.encoder.load_pretrained(cfg.pretrained_depth_encoder)
        if cfg.pretrained_pose_encoder:
            self.pose.encoder.load_pretrained(cfg.pretrained_pose_encoder)

    @staticmethod
    def trainable(phase: str) -> list[str]:
        """Names of the sub-modules the optimiser steps in ``phase``."""
        _check_phase(phase)
        return {'rigid': ['depth', 'pose'], 'motion': ['motion'], 'joint': ['depth', 'pose', 'motion']}[phase]

    def forward(self, batch: dict, phase: str):
        return self.loss(batch, phase)

    def export_module(self) -> DepthExportModule:
        """The depth network as the exported graph: image [N,3,H,W] in [0,1] → depth [N,1,H,W]."""
        return DepthExportModule(self.depth)

    # ------------------------------------------------------------------ the pieces

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        for key in ('frames', 'K', 'inv_K'):
            if key not in batch:
                raise KeyError(f'batch has no {key!r}; the stage-1 model needs frames, K and inv_K '
                               f'(got keys {sorted(batch)})')
        frames = batch['frames']
        if frames.dim() != 5 or frames.shape[1] != 3 or frames.shape[2] != 3:
            raise ValueError(f'frames must be [B,3(t-1,t,t+1),3,H,W], got {tuple(frames.shape)}')
        raw = batch.get('frames_raw', frames)
        if raw.shape != frames.shape:
            raise ValueError(f'frames_raw {tuple(raw.shape)} and frames {tuple(frames.shape)} differ in shape')
        K, inv_K = batch['K'], batch['inv_K']
        if K.shape != (frames.shape[0], 3, 3) or inv_K.shape != K.shape:
            raise ValueError(f'K and inv_K must be [B,3,3] with B={frames.shape[0]}, got {tuple(K.shape)}, '
                             f'{tuple(inv_K.shape)}')
        return frames, raw, K, inv_K

    def _depth_and_pose(self, frames: torch.Tensor):
        """Multi-scale disparity {s: [B,1,h,w]}, full-resolution depth {s: [B,1,H,W]} and
        per offset (T_ref_to_src [B,4,4], axisangle [B,3], translation [B,3])."""
        cfg = self.config
        ref = frames[:, 1]
        h, w = ref.shape[-2:]
        disps = self.depth(ref)
        depths = {}
        for s, disp in disps.items():
            up = disp if s == 0 else F.interpolate(disp, size=(h, w), mode='bilinear', align_corners=False)
            depths[s] = disp_to_depth(up, cfg.min_depth, cfg.max_depth)[1]
        poses = {off: self.pose.reference_to_source(ref, frames[:, off + 1], off) for off in OFFSETS}
        return disps, depths, poses

    def _residual_flows(self, frames: torch.Tensor, depth0: torch.Tensor, K: torch.Tensor, inv_K: torch.Tensor,
                        poses: dict, full_masking: bool) -> dict[int, torch.Tensor]:
        """Residual flow per offset on the reference grid, float32 [B,2,H,W] in source pixels.

        depth0: reference depth [B,1,H,W] (no gradient flows into it). ``full_masking`` applies the
        joint-phase mean-norm masking and the two-direction consistency.
        """
        cfg = self.config
        ref = frames[:, 1]
        flows = {}
        for off in OFFSETS:
            T = poses[off][0].detach()
            rendered, depth_src, valid = render_reference_in_source(ref, depth0, K, inv_K, T, cfg.splat_upsample)
            flow_src = self.motion(rendered, frames[:, off + 1], valid)
            with torch.no_grad():
                keep = valid > 0
                if full_masking:
                    mag = flow_src.norm(dim=1, keepdim=True)
                    area = valid.sum(dim=(2, 3), keepdim=True).clamp(min=1)
                    mean = (mag * valid).sum(dim=(2, 3), keepdim=True) / area
                    keep = keep & (mag >= mean) & (mag >= 1e-5)
            flow_src = torch.where(keep, flow_src, torch.zeros_like(flow_src))
            flows[off] = transfer_flow_to_reference(flow_src, depth_src, depth0, K, inv_K, T, cfg.occlusion_tolerance)
        if full_masking:
            with torch.no_grad():
                both = (flows[-1].abs().sum(1, keepdim=True) > 0) & (flows[1].abs().sum(1, keepdim=True) > 0)
            flows = {off: torch.where(both, f, torch.zeros_like(f)) for off, f in flows.items()}
        return flows

    # ------------------------------------------------------------------ public API

    def loss(self, batch: dict, phase: str) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
        """Stage-1 loss of one batch in ``phase`` ∈ {'rigid', 'motion', 'joint'}.

        Returns (loss scalar tensor, logs {name: float}, previews {name: tensor} of the first batch
        item, detached on the CPU: 3-channel RGB in [0,1] ('image', 'warped_prev', 'warped_next'),
        1-channel maps ('depth' metres, 'disp' in [0,1], 'automask' 0/1) and 2-channel flows in
        pixels ('flow_prev', 'flow_next'; only in the motion and joint phases)).
        """
        _check_phase(phase)
        cfg = self.config
        frames, raw, K, inv_K = self._inputs(batch)
        grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and phase != 'motion'):
            disps, depths, poses = self._depth_and_pose(frames)
        flows = {off: None for off in OFFSETS}
        if phase != 'rigid':
            flows = self._residual_flows(frames, depths[0].detach(), K, inv_K, poses, phase == 'joint')

        target = raw[:, 1]
        sources = [raw[:, off + 1] for off in OFFSETS]
        photometric = []
        warped0 = automask0 = None
        keep = self.photometric_keep(batch, target)
        for s in sorted(depths):
            warped, valid = [], []
            for off in OFFSETS:
                img, ok = warp(raw[:, off + 1], depths[s], K, inv_K, poses[off][0], flows[off])
                warped.append(img)
                valid.append(ok)
            loss_s, automask, _ = min_reprojection_loss(target, warped, sources, valid, cfg.ssim_weight, keep=keep)
            photometric.append(loss_s)
            if s == 0:
                warped0, automask0 = warped, automask
        photometric = torch.stack(photometric).mean()

        smoothness = []
        for s, disp in disps.items():
            image = target if s == 0 else F.interpolate(target, size=disp.shape[-2:], mode='area')
            smoothness.append(edge_aware_smoothness(disp, image) / (2 ** s))
        smoothness = torch.stack(smoothness).mean()

        sparsity = torch.zeros((), device=target.device)
        if phase == 'joint':
            sparsity = motion_sparsity(torch.cat([flows[-1], flows[1]], dim=0))

        odometry = torch.zeros((), device=target.device)
        odom = batch.get('odom_distance')
        odom_T = batch.get('odom_pose') if cfg.odometry_supervision == 'pose' else None
        if odom is not None:
            odom = odom.to(target.device, target.dtype)
            terms = []
            for off in OFFSETS:
                k = 0 if off < 0 else 1
                dist = odom[:, k]
                if odom_T is not None:
                    rel = odom_T[:, k].to(target.device, target.dtype)
                    terms.append(relative_pose_loss(poses[off][0], rel, cfg.odometry_rotation_weight))
                    known = torch.isfinite(rel.flatten(1)).all(dim=1)
                    dist = torch.where(known, torch.full_like(dist, float('nan')), dist)
                terms.append(translation_magnitude_loss(poses[off][2], dist))
            odometry = torch.stack(terms).sum() / len(OFFSETS)

        total = (photometric + cfg.smoothness_weight * smoothness + cfg.sparsity_weight * sparsity
                 + cfg.odometry_weight * odometry)
        extra, extra_logs = self.extra_loss(batch, depths)
        total = total + extra
        logs = self._logs(batch, phase, total, photometric, smoothness, sparsity, odometry, automask0,
                          depths[0], poses, flows, odom)
        logs.update(extra_logs)
        previews = self._previews(target, disps[0], depths[0], warped0, automask0, flows)
        return total, logs, previews

    def photometric_keep(self, batch: dict, target: torch.Tensor) -> torch.Tensor | None:
        """[B,1,H,W] 0 on pixels the photometric loss must skip, or None for all (stage 1; the final
        stage may leave the labelled dynamic objects to their pseudo labels)."""
        return None

    def extra_loss(self, batch: dict, depths: dict[int, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Further loss terms on the full-resolution depths {scale: [B,1,H,W]} (none in stage 1; the final
        stage adds the pseudo-label term). Returns (weighted scalar, logs)."""
        return torch.zeros((), device=depths[0].device), {}

    @torch.no_grad()
    def predict(self, batch: dict) -> dict[str, torch.Tensor]:
        """Scene depth and residual object flow for a batch, in eval mode (the mode is restored after).

        Returns depth float32 [B,1,H,W] (metres when trained with odometry), flow_prev and flow_next
        float32 [B,2,H,W]: residual object flow on reference-frame pixels towards frames t-1 and t+1
        (the with-motion minus the rigid reprojection, in pixels), joint-phase masking applied and
        |fx|+|fy| < flow_epsilon set to 0.
        """
        was_training = self.training
        self.eval()
        try:
            frames, _, K, inv_K = self._inputs(batch)
            _, depths, poses = self._depth_and_pose(frames)
            flows = self._residual_flows(frames, depths[0], K, inv_K, poses, full_masking=True)
            out = {'depth': depths[0]}
            for off, name in ((-1, 'flow_prev'), (1, 'flow_next')):
                f = flows[off]
                out[name] = torch.where(f.abs().sum(1, keepdim=True) < self.config.flow_epsilon, torch.zeros_like(f), f)
            return out
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ diagnostics

    @torch.no_grad()
    def _logs(self, batch, phase, total, photometric, smoothness, sparsity, odometry, automask, depth, poses,
              flows, odom) -> dict[str, float]:
        logs = {'loss': total.item(), 'photometric': photometric.item(), 'smoothness': smoothness.item(),
                'sparsity': sparsity.item(), 'odometry': odometry.item(),
                'automask_fraction': automask.mean().item(),
                'translation_norm': torch.stack([p[2].norm(dim=1) for p in poses.values()]).mean().item(),
                'depth_median': depth.median().item()}
        if odom is not None and torch.isfinite(odom).any():
            logs['odometry_distance'] = odom[torch.isfinite(odom)].mean().item()
        if phase != 'rigid':
            dynamic = dynamic_pixel_mask(flows[-1], flows[1], self.config.flow_threshold)
            logs['dynamic_fraction'] = dynamic.float().mean().item()
            magnitude = (flows[-1].norm(dim=1) + flows[1].norm(dim=1)) / 2  # [B,H,W]
            logs['flow_mean_px'] = magnitude.mean().item()
            moving = batch.get('moving')
            if moving is not None:
                moving = moving.to(magnitude.device).reshape(magnitude.shape) > 0
                if moving.any():
                    logs['flow_px_moving'] = magnitude[moving].mean().item()
                if (~moving).any():
                    logs['flow_px_static'] = magnitude[~moving].mean().item()
        gt = batch.get('gt_depth')
        if gt is not None:
            ratios, abs_rel = [], []
            for pred_i, gt_i in zip(depth, gt.to(depth.device)):
                ok = gt_i > 0
                if ok.sum() < 10:
                    continue
                g, p = gt_i[ok], pred_i[ok]
                ratio = g.median() / p.median()
                ratios.append(ratio)
                abs_rel.append(((p * ratio - g).abs() / g).mean())
            if ratios:
                logs['gt_scale_ratio'] = torch.stack(ratios).median().item()
                logs['gt_abs_rel_median_scaled'] = torch.stack(abs_rel).mean().item()
        return logs

    @torch.no_grad()
    def _previews(self, image, disp, depth, warped, automask, flows) -> dict[str, torch.Tensor]:
        out = {'image': image[0], 'disp': disp[0], 'depth': depth[0], 'warped_prev': warped[0][0],
               'warped_next': warped[1][0], 'automask': automask[0]}
        if flows[-1] is not None:
            out['flow_prev'] = flows[-1][0]
            out['flow_next'] = flows[1][0]
        return {k: v.detach().float().cpu() for k, v in out.items()}


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f'unknown stage-1 phase {phase!r}; valid phases are {list(PHASES)}')
