"""Stage-3 model: Depth Scale Alignment (DSA, reference §3.3), with a geometric anchor.

For one object the network predicts one positive scale β such that β·D̃ (D̃: the object-network
depth normalised to mean 1 inside the object's mask) is the object's depth in the scene's
(metric) scale. Inputs, built by `dsa_inputs` the same way in training and inference:

- the image (3 channels);
- the scene depth on the ground around the object only: ground pixels (training.ground: normals
  of the stage-1 depth, no road labels needed; every instance excluded) outside the object's box
  (tight box grown by `box_margin_px`), as log(1+d)/log(1+max_depth), 0 elsewhere — the object's
  own region and its box are hidden, so the network cannot copy the scene depth there, which is
  wrong exactly on the dynamic objects it is applied to;
- the object's mean-normalised depth D̃ (0 outside its mask);
- scalar features: a geometric anchor log β₀ and the box geometry. β₀ is where the ground plane
  fitted to the visible ground context meets the rays through the object's lowest pixels, over D̃
  at those pixels (median over columns): the scale at which the object stands on the ground. It
  uses only the hidden-box context, like the image channels. Only the object's lowest pixels count
  (training.ground.contact_pixels): between a car's wheels the ray passes under the body.
  That is `dsa.model.anchor: contact`. `upright` (the default) reads the object depth over the whole
  object instead of at those pixels: β₀ = median ground depth at the contact pixels / median of D̃ (the
  object stands upright where it touches the ground). The object network's depth is least right in its
  lowest rows, next to the road, and 'contact' carries that error into β₀: on the cpu-small train split
  it put labelled moving cars within 10 m at 1.24x their true depth where upright gives 1.08 (docs/training.md,
  "Moving objects at the scene's scale").

β = exp(log β₀ + f(image features, scalars)), with f's last layer initialised to zero: the untrained
network is the geometric estimate, training on static objects learns the corrections (where the
contact point is hidden, the object's shape, a ground that is not planar). exp keeps β positive
(the reference's output was unconstrained, §6.5). When no plane can be fitted the anchor falls back
to the median context depth over the median of D̃ and the `anchor_ok` feature says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.ground import contact_pixels, ground_below, ground_mask, ground_plane
from training.networks.resnet import ResNetEncoder

N_SCALARS = 8
ANCHORS = ('upright', 'contact')


@dataclass
class DsaModelConfig:
    """dsa.model: encoder size and the depth range used to scale the context channel."""

    encoder_depth: int = 18
    width_mult: float = 0.5
    hidden: int = 128
    max_depth: float = 100.0
    use_anchor: bool = True     # false: log β₀ = 0 (the network alone, the reference's formulation)
    anchor: str = 'upright'     # upright | contact: how β₀ reads the object depth (dsa_inputs)

    def __post_init__(self):
        if self.width_mult <= 0:
            raise ValueError(f'dsa.model.width_mult must be > 0, got {self.width_mult}')
        if self.max_depth <= 1:
            raise ValueError(f'dsa.model.max_depth must be > 1 m, got {self.max_depth}')
        if self.anchor not in ANCHORS:
            raise ValueError(f'dsa.model.anchor must be one of {", ".join(ANCHORS)}, got {self.anchor!r}')


def object_box(mask: np.ndarray, margin: int) -> np.ndarray:
    """bool [H,W]: the tight bounding box of `mask` grown by `margin` pixels on each side (clipped)."""
    h, w = mask.shape
    box = np.zeros((h, w), bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return box
    box[max(0, rows[0] - margin):min(h, rows[-1] + margin + 1), max(0, cols[0] - margin):min(w, cols[-1] + margin + 1)] = True
    return box


@dataclass
class DsaInput:
    image: np.ndarray        # float32 [5,H,W]
    scalars: np.ndarray      # float32 [N_SCALARS]
    log_anchor: float        # log β₀
    anchor_ok: bool
    mask: np.ndarray         # bool [H,W] the object
    norm_depth: np.ndarray   # float32 [H,W] D̃ (0 outside the mask)
    context: np.ndarray      # bool [H,W] the ground pixels the input shows
    fill: np.ndarray | None = None   # float32 [H,W] D̃ of the pixels between the mask and the ground below it
                                     # (extend_to_ground; 0 elsewhere): the object's pseudo label covers them too


def out_of_view(mask: np.ndarray, ground: np.ndarray) -> bool:
    """True when an object's contact with the ground is below the image: in at least half of the columns of its
    contact pixels (training.ground.contact_pixels) no ground pixel lies between the mask and the image's bottom.
    A mask that reaches the bottom row is one such; so is a learned mask that stops short of a near car whose
    lower body fills the rows below it."""
    u, v = contact_pixels(mask)
    if not len(u):
        return False
    open_below = [not np.asarray(ground[vv + 1:, uu], bool).any() for uu, vv in zip(u.tolist(), v.tolist())]
    return float(np.mean(open_below)) >= 0.5


def dsa_inputs(rgb: np.ndarray, scene_depth: np.ndarray, instances: np.ndarray, object_id: int,
               object_depth: np.ndarray, K: np.ndarray, box_margin: int, max_depth: float,
               ground_angle_deg: float = 15.0, ground_step: int = 2, ground: np.ndarray | None = None,
               use_anchor: bool = True, anchor: str = 'upright', extend_to_ground: bool = False,
               bottom_edge: str = 'anchor') -> DsaInput | None:
    """The DSA input of one object (module docstring); None when the object has no depth in its mask.

    rgb float32 [3,H,W] in [0,1]; scene_depth float32 [H,W]; instances int [H,W] ids (0 none);
    object_depth float32 [H,W] (the object network's depth, >0 inside the mask); K [3,3] at H x W.
    ground: the frame's ground mask if already computed (instances excluded).
    anchor: 'contact' divides each contact pixel's ground depth by D̃ at that pixel; 'upright' divides the
    median ground depth at the contact pixels by the median of D̃ over the whole object (the object stands
    upright where it touches the ground), so the anchor does not depend on the shape of the object
    network's depth in the object's lowest rows, which stage 2 gets wrong near the road (module docstring).
    extend_to_ground: the object reaches down to the first ground pixel below its mask in each column
    (training.ground.ground_below; not past another object). Learned masks stop short of a car's bottom
    (on the cpu-small train split by a median 2 rows, covering 57 % of the car), so the ray through the mask's
    lowest pixel meets the ground behind the car: the anchor put those cars at 1.22x their depth (docs/training.md).
    With it the contact is the top edge of the first ground pixel (in the columns within a row of the lowest
    such), and `fill` gives the gap's pixels the D̃ of their column's lowest object pixel (a car's back is upright).
    When fewer than half of the columns reach the ground, the mask's own contact counts and nothing is filled.
    bottom_edge 'cap': when the object's contact with the ground is out of view (out_of_view: no ground below
    its mask down to the image's bottom), the ground read at its lowest row lies behind it, so the anchor is only
    an upper bound: the scale that puts the object's median at the median scene depth of its pixels replaces it
    when that is smaller ('anchor': used as it is).
    """
    if box_margin < ground_step:
        raise ValueError(f'box_margin ({box_margin}) must be >= ground_step ({ground_step}): ground normals come from '
                         f'neighbours ground_step px away, so a smaller margin lets the hidden scene depth of the '
                         f'object decide which context pixels are shown')
    m = (instances == object_id) & (object_depth > 0)
    if m.sum() < 2:
        return None
    h, w = m.shape
    norm = np.zeros((h, w), np.float32)
    norm[m] = object_depth[m] / float(object_depth[m].mean())
    if ground is None:
        ground = ground_mask(scene_depth, K, ground_angle_deg, ground_step, exclude=instances > 0)
    box = object_box(m, box_margin)
    context = ground & ~box & ~m
    ctx = np.zeros((h, w), np.float32)
    ctx[context] = np.log1p(scene_depth[context]) / math.log1p(max_depth)

    fill = None
    u, v = contact_pixels(m)
    edge = v + 0.5                                  # the bottom edge of the lowest pixel
    if extend_to_ground:
        ub, vb, vg = ground_below(m, ground, blocked=(instances > 0) & ~m)
        found = vg >= 0
        if found.sum() >= max(1, 0.5 * len(ub)):
            fill = np.zeros((h, w), np.float32)
            for uu, v0, v1 in zip(ub[found].tolist(), vb[found].tolist(), vg[found].tolist()):
                fill[v0 + 1:v1, uu] = norm[v0, uu]
            keep = vg[found] >= vg[found].max() - 1
            u, v = ub[found][keep], vb[found][keep]
            edge = vg[found][keep].astype(np.float64)   # the top edge of the first ground pixel

    anchor_ok = False
    log_anchor = 0.0
    if use_anchor:
        plane = ground_plane(scene_depth, K, context)
        if plane is not None and len(u):
            zg = plane.depth_at(K, u, edge)
            dn = norm[v, u]
            ok = np.isfinite(zg) & (zg > 0) & (zg < 10 * max_depth) & (dn > 0)
            if ok.sum() >= max(1, 0.5 * len(u)):
                if anchor == 'upright':
                    log_anchor = float(np.log(np.median(zg[ok]) / float(np.median(norm[m]))))
                else:
                    log_anchor = float(np.log(np.median(zg[ok] / dn[ok])))
                anchor_ok = True
                if bottom_edge == 'cap' and fill is None and out_of_view(m, ground):
                    scene = scene_depth[m]
                    scene = scene[np.isfinite(scene) & (scene > 0)]
                    if scene.size:
                        log_scene = float(np.log(float(np.median(scene)) / float(np.median(norm[m]))))
                        log_anchor = min(log_anchor, log_scene)
        if not anchor_ok:
            ref = scene_depth[context] if context.any() else scene_depth[~box & (scene_depth > 0)]
            if ref.size:
                log_anchor = float(np.log(max(float(np.median(ref)), 1e-3) / max(float(np.median(norm[m])), 1e-3)))
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    scalars = np.array([log_anchor / math.log(max_depth), float(anchor_ok),
                        (cols[0] + cols[-1]) / 2 / w - 0.5, rows[-1] / h, (rows[-1] - rows[0] + 1) / h,
                        (cols[-1] - cols[0] + 1) / w, float(rows[-1] >= h - 1), context.mean()], np.float32)
    image = np.concatenate([rgb.astype(np.float32), ctx[None], norm[None]], 0)
    return DsaInput(image=image, scalars=scalars, log_anchor=log_anchor, anchor_ok=anchor_ok, mask=m,
                    norm_depth=norm, context=context, fill=fill)


class DsaNet(nn.Module):
    """5-channel image + scalars → log-scale correction; ``scale(image, scalars, log_anchor)`` → β > 0."""

    def __init__(self, config: DsaModelConfig | None = None):
        super().__init__()
        self.config = cfg = config or DsaModelConfig()
        self.encoder = ResNetEncoder(cfg.encoder_depth, cfg.width_mult, in_channels=5)
        feat = self.encoder.num_ch_enc[-1]
        self.head = nn.Sequential(nn.Linear(feat + N_SCALARS, cfg.hidden), nn.ReLU(inplace=True),
                                  nn.Linear(cfg.hidden, cfg.hidden // 2), nn.ReLU(inplace=True),
                                  nn.Linear(cfg.hidden // 2, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, image: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        """log-scale correction [B]."""
        f = self.encoder(image)[-1].mean(dim=(2, 3))
        return self.head(torch.cat([f, scalars], 1))[:, 0]

    def scale(self, image: torch.Tensor, scalars: torch.Tensor, log_anchor: torch.Tensor) -> torch.Tensor:
        """β [B] > 0."""
        return torch.exp(log_anchor + self(image, scalars))


def scale_loss(beta: torch.Tensor, norm_depth: torch.Tensor, scene_depth: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
    """Mean over objects of the in-mask relative L1 |β·D̃ − D_scene| / D_scene (each object counts once,
    near and far alike — the AbsRel the method is judged by; the reference's Huber δ=0.005 on raw
    depth weighs far objects more). beta [B]; maps [B,1,H,W]; mask [B,1,H,W]."""
    m = mask.to(norm_depth.dtype) * (scene_depth > 0).to(norm_depth.dtype)
    err = (beta[:, None, None, None] * norm_depth - scene_depth).abs() / scene_depth.clamp(min=1e-3)
    per = (err * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp(min=1)
    return per.mean()
