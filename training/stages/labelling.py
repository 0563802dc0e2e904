"""Static/dynamic labelling of instances from stage-1 outputs only (numpy; reference §3.1).

Never from the synthetic moving flags, velocities or GT depth: those exist only to measure.

Per instance (network resolution, road removed, at least `min_area_fraction` of the image) three
cues are measured, each recorded in the labels file:

- flow coverage (the reference's cue): the share of the instance's pixels whose residual flow
  (Σ|flow_prev| + Σ|flow_next|)/2 reaches `flow_threshold_px`. The reference's 1 px was set for
  512-px-wide Cityscapes and a RAFT trained for 15 epochs; the threshold here is in pixels of the
  network input and is a setting of the preset (cpu-small's short joint phase moves objects by
  fractions of a pixel at 320 px width).
- flow contrast: the instance's median flow over the frame's background (non-instance pixels) flow
  at its `background_quantile`; an instance that moves stands out from the static scene whatever
  the absolute scale of the flow.
- ground contact: the median over the instance's columns of its scene depth at its lowest pixel
  over the depth of the ground plane (fitted to the stage-1 depth of the frame's ground, all
  instances excluded; training.ground) along the same ray. A static object stands where the
  ground says; a car that travels with the camera carries no photometric signal and gets a depth
  behind its own contact with the road, an oncoming one in front of it. Only an instance whose contact
  is visible counts (`contact_clear_min` of its contact pixels have background, not another object or
  the image border, just below them): a parked car partly hidden behind another has its lowest
  visible pixel above the road.
- central strip (the reference's rule for objects straight ahead with no residual flow): the
  instance touches the central `centre_strip` share of the image columns and stands on the ground
  ahead (its bottom below the horizon of the fitted plane).

- optical (optical_log_ratio > 0; needs the frame's flow disagreement, training.masks.seeds.
  flow_disagreement of DIS optical flow against the rigid flow of stage 1's depth and camera motion): the
  median over the instance's pixels where it is defined of log(|observed| / |rigid|) is at most
  -optical_log_ratio or at least optical_log_ratio_towards (0 = the same threshold) — the object moved
  otherwise than stage 1's depth says a static object would: less (the cars that travel with the camera,
  which stage 1 explains away with no residual flow) or more (oncoming traffic, whose ratio stays near
  ln 2 = 0.69 or below: the seeds on oncoming cars have medians of 0.47-0.97, docs/training.md).
  Counted only where at least `optical_min_share` of the instance's pixels have a defined ratio.

An instance is dynamic when any enabled cue fires (thresholds in LabellingConfig; 0 disables).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from training.ground import Plane, bottom_pixels, contact_pixels, contact_ratio, ground_mask, ground_plane
from training.masks.seeds import moved_otherwise
from training.stages.outputs import InstanceLabel, ScenePrediction


@dataclass
class LabellingConfig:
    """objects.labelling: which instances count and the static/dynamic rule (module docstring)."""

    min_area_fraction: float = 0.005    # instances smaller than this share of the image are dropped (reference 0.5 %)
    road_classes: list[str] = field(default_factory=lambda: ['road'])   # instance classes removed as road
    flow_threshold_px: float = 1.0      # px at the network resolution (reference: 1 px at 512 px width)
    flow_coverage: float = 0.5          # share of the instance at/above the threshold (reference 0.5); 0 = off
    contrast_factor: float = 0.0        # instance median flow >= factor x background quantile; 0 = off
    background_quantile: float = 0.9
    contrast_min_px: float = 0.05       # ... and at least this many pixels (flow noise floor)
    ground_tolerance: float = 0.0       # |log(contact ratio)| >= log(1 + tol) → dynamic; 0 = off
    contact_clear_min: float = 0.5      # ... only when this share of the contact has background just below it
    centre_strip: float = 0.05          # share of the width around the centre column (reference 1/20); 0 = off
    # hashed only when not at the default (training.config HASHED/UNLESS_DEFAULT; that module imports this one)
    optical_log_ratio: float = field(default=0.0, metadata={'hashed': 'unless_default'})   # 0 = off (docstring)
    optical_log_ratio_towards: float = field(default=0.0, metadata={'hashed': 'unless_default'})  # 0 = the same
    optical_min_share: float = field(default=0.1, metadata={'hashed': 'unless_default'})
    ground_angle_deg: float = 15.0      # ground pixels: normal within this angle of the vertical
    ground_step_px: int = 2             # normals from neighbours this many pixels away

    def __post_init__(self):
        for name in ('min_area_fraction', 'flow_coverage', 'background_quantile', 'centre_strip', 'optical_min_share'):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f'objects.labelling.{name} must be in [0, 1], got {v}')
        for name in ('flow_threshold_px', 'contrast_factor', 'contrast_min_px', 'ground_tolerance', 'optical_log_ratio',
                     'optical_log_ratio_towards'):
            if getattr(self, name) < 0:
                raise ValueError(f'objects.labelling.{name} must be >= 0, got {getattr(self, name)}')
        if not 0 < self.ground_angle_deg < 90:
            raise ValueError(f'objects.labelling.ground_angle_deg must be in (0, 90), got {self.ground_angle_deg}')
        if self.ground_step_px < 1:
            raise ValueError(f'objects.labelling.ground_step_px must be >= 1, got {self.ground_step_px}')


def road_ids(classes: dict[int, str] | None, road_classes) -> set[int]:
    """Ids of the instances whose class is a road class (they are ground, not objects)."""
    road = set(road_classes)
    return {i for i, c in (classes or {}).items() if c in road}


def without_road(mask: np.ndarray, ids: set[int]) -> np.ndarray:
    """The instance map with road instances set to 0 (background: ground for the plane, static for the flow)."""
    if not ids:
        return mask
    return np.where(np.isin(mask, sorted(ids)), 0, mask)


def min_area(cfg: LabellingConfig, height: int, width: int) -> int:
    return max(1, int(math.ceil(cfg.min_area_fraction * height * width)))


def candidate_instances(mask: np.ndarray, classes: dict[int, str] | None, cfg: LabellingConfig) -> dict[int, np.ndarray]:
    """{id: bool [H,W]} of the instances that count: road classes removed, smaller than the size threshold dropped."""
    h, w = mask.shape
    ids, counts = np.unique(mask[mask > 0], return_counts=True)
    road = set(cfg.road_classes)
    out = {}
    for i, n in zip(ids.tolist(), counts.tolist()):
        if classes is not None and classes.get(i) in road:
            continue
        if n >= min_area(cfg, h, w):
            out[i] = mask == i
    return out


def frame_ground(depth: np.ndarray, K: np.ndarray, instances: np.ndarray, cfg: LabellingConfig,
                 seed: int = 0) -> tuple[np.ndarray, Plane | None]:
    """(ground mask, fitted plane) of one frame from its scene depth, instance pixels excluded."""
    g = ground_mask(depth, K, cfg.ground_angle_deg, cfg.ground_step_px, exclude=instances > 0)
    return g, ground_plane(depth, K, g, seed=seed)


def touches_centre(m: np.ndarray, fraction: float) -> bool:
    if fraction <= 0:
        return False
    w = m.shape[1]
    half = max(0.5, fraction * w / 2)
    lo, hi = int(math.floor((w - 1) / 2 - half + 0.5)), int(math.ceil((w - 1) / 2 + half - 0.5))
    return bool(m[:, max(0, lo):min(w, hi + 1)].any())


def instance_cues(m: np.ndarray, pred: ScenePrediction, magnitude: np.ndarray, background: np.ndarray,
                  plane: Plane | None, K: np.ndarray, cfg: LabellingConfig,
                  instances_below: np.ndarray | None = None, disagreement: np.ndarray | None = None) -> dict:
    """The cues of one instance mask m (bool [H,W]); see the module docstring. disagreement: the frame's
    flow disagreement [H,W] (NaN where undefined), for the optical cue."""
    if instances_below is None:
        instances_below = m.astype(np.int32)
    vals = magnitude[m]
    bg = magnitude[background]
    bg_q = float(np.quantile(bg, cfg.background_quantile)) if bg.size else 0.0
    ratio = contact_ratio(pred.depth, m, plane, K)
    cu, cv = contact_pixels(m)
    h = m.shape[0]
    # the contact is visible when the pixels just below it are background (not another object, not the border)
    below = [(instances_below[np.minimum(h - 1, cv + k), cu] == 0) & (cv + k < h) for k in (1, 2)]
    contact_clear = float(np.mean(below[0] & below[1])) if len(cu) else 0.0
    u, v = bottom_pixels(m)
    on_ground = False
    if plane is not None and len(u):
        zg = plane.depth_at(K, u, v + 0.5)
        on_ground = bool(np.isfinite(zg).mean() > 0.5)
    optical = {}
    if disagreement is not None:
        d = disagreement[m]
        d = d[np.isfinite(d)]
        optical = {'optical_share': float(d.size / max(1, int(m.sum()))),
                   'optical_log_ratio': float(np.median(d)) if d.size else None}
    return {
        **optical,
        'flow_coverage': float((vals >= cfg.flow_threshold_px).mean()) if vals.size else 0.0,
        'flow_median_px': float(np.median(vals)) if vals.size else 0.0,
        'background_flow_px': bg_q,
        'contact_ratio': ratio,
        'contact_clear': contact_clear,
        'centre': touches_centre(m, cfg.centre_strip) and on_ground,
    }


def decide(cues: dict, cfg: LabellingConfig) -> tuple[bool, list[str]]:
    """(dynamic?, the cues that fired)."""
    fired = []
    if cfg.flow_coverage > 0 and cues['flow_coverage'] >= cfg.flow_coverage:
        fired.append('flow')
    if cfg.contrast_factor > 0 and cues['flow_median_px'] >= max(cfg.contrast_min_px,
                                                                 cfg.contrast_factor * cues['background_flow_px']):
        fired.append('contrast')
    r = cues.get('contact_ratio')
    if cfg.ground_tolerance > 0 and r is not None and r > 0 and cues.get('contact_clear', 1.0) >= cfg.contact_clear_min \
            and abs(math.log(r)) >= math.log1p(cfg.ground_tolerance):
        fired.append('ground')
    if cues.get('centre'):
        fired.append('centre')
    lr = cues.get('optical_log_ratio')
    if cfg.optical_log_ratio > 0 and lr is not None and cues.get('optical_share', 0.0) >= cfg.optical_min_share \
            and moved_otherwise(lr, cfg.optical_log_ratio, cfg.optical_log_ratio_towards):
        fired.append('optical')
    return bool(fired), fired


def label_frame(mask: np.ndarray, pred: ScenePrediction, K: np.ndarray, cfg: LabellingConfig,
                classes: dict[int, str] | None = None, seed: int = 0, disagreement: np.ndarray | None = None
                ) -> tuple[list[InstanceLabel], dict[int, np.ndarray]]:
    """Labels of the instances of one frame (network resolution) and their (road-free) masks; disagreement:
    the frame's optical flow disagreement (the optical cue; None = not measured)."""
    inst = candidate_instances(mask, classes, cfg)
    if not inst:
        return [], {}
    magnitude = pred.flow_magnitude()
    objects = without_road(mask, road_ids(classes, cfg.road_classes))   # a road instance is ground
    _, plane = frame_ground(pred.depth, K, objects, cfg, seed)
    background = (objects == 0) & (pred.depth > 0)
    labels = []
    for i, m in inst.items():
        cues = instance_cues(m, pred, magnitude, background, plane, K, cfg, objects, disagreement)
        dyn, fired = decide(cues, cfg)
        extra = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in cues.items()}
        extra['cues'] = fired
        labels.append(InstanceLabel(int(i), 'dynamic' if dyn else 'static', int(m.sum()), extra))
    return labels, inst
