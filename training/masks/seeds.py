"""Seed masks: the moving regions of one frame grouped into objects (numpy + OpenCV; reference §3U 1.1/1.3).

    moving_pixels(magnitude, ground, cfg)          bool [H,W]: residual flow clearly above the frame's own
                                                   level, and not ground (motion: network, the reference's cue)
    optical_flow(a, b) / rigid_flow(depth, K, T)   float32 [2,H,W]: the observed flow between two frames (DIS,
                                                   OpenCV) and the flow a static scene at `depth` would have
    flow_disagreement(observed, rigid, min_px)     float32 [H,W] log(|observed| / |rigid|), NaN where undecided
    moved_otherwise(log_ratio, less, more)         bool: a log ratio <= -less or >= more (0 = less)
    moving_pixels_optical(disagreement, ground, cfg)  bool [H,W]: disagreement <= -optical_log_ratio or >=
                                                   optical_log_ratio_towards, not ground
                                                   (motion: optical)
    floating_pixels(depth, ground, K, plane, ...)  bool [H,W]: non-ground pixels much farther than the ground
                                                   where their column meets it (floating_log_ratio > 0)
    group_moving_regions(moving, depth, flow, cfg) int32 [H,W] group ids (0 = none): connected components of
                                                   the moving pixels, cut where depth or flow jump
    seed_masks(groups, moving, ground, cfg)        uint16 [H,W] seed ids: the reference's seed rules per group

The grouping by slot attention (the reference's) gives `groups` too (training/networks/slot_attention.py,
one id per slot); the seed rules are the same for both.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from training.masks.config import SeedsStageConfig


def moving_pixels(magnitude: np.ndarray, ground: np.ndarray | None, cfg: SeedsStageConfig) -> np.ndarray:
    """bool [H,W]: magnitude (px, [H,W]) >= flow_threshold_px and >= contrast_factor x the frame's median
    magnitude (a static scene's flow is the frame's typical flow, whatever its absolute scale), minus
    `ground` (bool [H,W]; the road under a car carries its flow at the contact)."""
    mag = np.nan_to_num(np.asarray(magnitude, np.float32))
    level = float(np.median(mag)) if mag.size else 0.0
    moving = mag >= max(cfg.flow_threshold_px, cfg.contrast_factor * level)
    if ground is not None:
        moving &= ~ground.astype(bool)
    return moving


def optical_flow(a: np.ndarray, b: np.ndarray, consistency_px: float = 1.0) -> np.ndarray:
    """float32 [2,H,W] (x, y) pixels: where each pixel of image a (uint8 [H,W] grey, or [H,W,3] RGB) is found in
    image b (same size), by OpenCV's DIS optical flow (medium preset); NaN where the flow cannot be trusted: the
    backward flow at the matched pixel does not lead back within consistency_px + 5 % of the flow (occlusions,
    textureless surfaces such as the sky, large motions DIS misses) or the match leaves the image. Classical,
    no training: it measures what the camera saw, not what stage 1 learned to explain."""
    def grey(x):
        x = np.asarray(x)
        if x.dtype != np.uint8:
            x = np.clip(np.rint(x * 255.0 if x.max() <= 1.0 else x), 0, 255).astype(np.uint8)
        return cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) if x.ndim == 3 else x
    a, b = grey(a), grey(b)
    if a.shape != b.shape:
        raise ValueError(f'optical_flow needs two images of one size, got {a.shape} and {b.shape}')
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    fwd = dis.calc(a, b, None)
    bwd = dis.calc(b, a, None)
    h, w = a.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    mx, my = u + fwd[..., 0], v + fwd[..., 1]
    back = cv2.remap(bwd, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(np.nan, np.nan))
    err = np.hypot(fwd[..., 0] + back[..., 0], fwd[..., 1] + back[..., 1])
    ok = (err <= consistency_px + 0.05 * np.hypot(fwd[..., 0], fwd[..., 1])) & (mx >= 0) & (mx <= w - 1) \
        & (my >= 0) & (my <= h - 1)
    return np.where(ok[None], fwd.transpose(2, 0, 1), np.nan).astype(np.float32)


def rigid_flow(depth: np.ndarray, K: np.ndarray, T: np.ndarray) -> np.ndarray:
    """float32 [2,H,W] pixels: the flow of a static scene at `depth` (float [H,W] metres, the reference frame)
    seen from a camera moved by T (4x4 reference camera -> source camera; K 3x3 at this resolution). Points
    that end behind the source camera or outside its image get NaN."""
    d = np.asarray(depth, np.float64)
    h, w = d.shape
    K = np.asarray(K, np.float64)
    T = np.asarray(T, np.float64)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    X = np.stack([(u - K[0, 2]) / K[0, 0] * d, (v - K[1, 2]) / K[1, 1] * d, d])
    Y = np.einsum('ij,jhw->ihw', T[:3, :3], X) + T[:3, 3, None, None]
    z = Y[2]
    with np.errstate(divide='ignore', invalid='ignore'):
        pu = np.where(z > 1e-6, K[0, 0] * Y[0] / z + K[0, 2], np.nan)
        pv = np.where(z > 1e-6, K[1, 1] * Y[1] / z + K[1, 2], np.nan)
    outside = ~((pu >= 0) & (pu <= w - 1) & (pv >= 0) & (pv <= h - 1))
    pu[outside] = np.nan
    pv[outside] = np.nan
    return np.stack([pu - u, pv - v]).astype(np.float32)


def flow_disagreement(observed, rigid, min_rigid_px: float) -> np.ndarray:
    """float32 [H,W]: log(|observed| / |rigid|) averaged over the directions given (lists of [2,H,W] flows, one
    pair per neighbouring frame), over the directions where both are finite and the rigid flow is at least
    min_rigid_px; NaN where none is (close to the focus of expansion a static and a moving point look alike).

    Stage 1 explains a moving object away by a wrong depth (a car that travels with the camera is pushed
    back), so the flow its depth predicts for a static world differs from what the camera saw: 0 on a static
    surface whose depth stage 1 got right, < 0 for an object that travels with the camera (it moves less than
    its depth says), > 0 for one that comes towards it. The comparison is by ratio, so it does not grow with
    the distance to the focus of expansion as a difference in pixels does."""
    num = den = None
    for obs, rig in zip(observed, rigid):
        o = np.hypot(obs[0], obs[1]).astype(np.float64)
        r = np.hypot(rig[0], rig[1]).astype(np.float64)
        ok = np.isfinite(r) & np.isfinite(o) & (r >= min_rigid_px)
        with np.errstate(divide='ignore', invalid='ignore'):
            lr = np.where(ok, np.log(np.maximum(np.where(ok, o, 1.0), 0.05) / np.where(ok, r, 1.0)), 0.0)
        num = lr if num is None else num + lr
        den = ok.astype(np.float64) if den is None else den + ok
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan).astype(np.float32)


def triplet_disagreement(rgb, depth: np.ndarray, K: np.ndarray, poses: dict, min_rigid_px: float
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(flow_disagreement [H,W], unexplained flow [4,H,W]) of a triplet's centre frame: optical_flow from
    rgb[1] (uint8 [H,W,3], the centre) to rgb[0] and rgb[2] against the rigid_flow of `depth` (metres [H,W])
    under poses {-1: T, 1: T} (4x4 centre -> neighbour camera); the unexplained flow is observed - rigid
    per direction (0 where either is unknown)."""
    observed, rigid = [], []
    for off in (-1, 1):
        observed.append(optical_flow(rgb[1], rgb[off + 1]))
        rigid.append(rigid_flow(depth, K, poses[off]))
    cue = flow_disagreement(observed, rigid, min_rigid_px)
    residual = np.concatenate([np.nan_to_num(o - r) for o, r in zip(observed, rigid)])
    return cue, residual


def moved_otherwise(log_ratio, less: float, more: float = 0.0):
    """bool (per element of an array, or one for a scalar): a flow_disagreement log ratio at most -less (the
    object moved less than a static one at its depth would) or at least `more` (it moved more; 0 = less); never
    where it is undefined (NaN). The one rule of the seeds' moving pixels and stage 2's optical labelling cue."""
    lr = np.asarray(log_ratio, np.float64)
    with np.errstate(invalid='ignore'):
        return np.isfinite(lr) & ((lr <= -less) | (lr >= (more or less)))


def moving_pixels_optical(disagreement: np.ndarray, ground: np.ndarray | None, cfg: SeedsStageConfig) -> np.ndarray:
    """bool [H,W]: flow_disagreement at most -cfg.optical_log_ratio (the observed flow at most 1/e^x times what
    stage 1's depth predicts for a static world: traffic that travels with the camera) or at least
    cfg.optical_log_ratio_towards (at least e^y times: oncoming traffic; 0, the default, = optical_log_ratio),
    minus `ground`.

    Why two thresholds: a car as fast as the camera coming towards it shows twice the flow of a static one
    (log ratio ln 2 = 0.69, less where stage 1 put it nearer), one that travels with it shows almost none
    (log ratio -2 to -3). Measured on the synthetic val / test frames (2026-12-07, docs/training.md): 1.0 on
    both sides flags 5 % / 11 % of the oncoming cars' pixels, 0.4 on the positive side 29 % / 26 %, at 2 % /
    4 % of the static pixels (1 % / 2 % with 1.0); the final network trained from those masks was not better
    on moving objects (val worse), so the default stays symmetric."""
    moving = moved_otherwise(np.asarray(disagreement, np.float32), cfg.optical_log_ratio, cfg.optical_log_ratio_towards)
    if ground is not None:
        moving &= ~ground.astype(bool)
    return moving


def floating_pixels(depth: np.ndarray, ground: np.ndarray, K: np.ndarray, plane, log_ratio: float,
                    rows: int = 4, edge: float = 0.5) -> np.ndarray:
    """bool [H,W]: pixels of an object that stage 1 put far behind where it stands on the ground — the
    signature of a vehicle that travels at the camera's speed (no flow, so a static-world network pushes it
    towards infinity; the optical cue leaves it undecided, its rigid flow is under a pixel near the focus of
    expansion).

    Per column, every run of non-ground pixels that ends directly above a ground pixel stands there: its contact
    depth is `plane`'s depth (training.ground.Plane; stage 1's road) at the boundary between the two. The run's
    pixels whose depth is at least e^log_ratio times the contact depth are flagged when the run is that far
    within `rows` rows of its contact: an upright object stage 1 got right starts at its contact depth and a
    farther one seen above it (a building over a car's roof) starts only above the nearer object. Above those
    first rows (where stage 1's depth climbs from the road to the object) the flagged stretch ends at the first
    step of more than `edge` in log depth between two rows: the background seen over the object. Runs that
    reach the image's bottom (contact out of view) are skipped, and so are contacts too close to the horizon to
    be read: where the road one row higher is more than e^(log_ratio / 2) times farther (there a one-row error
    in where the ground ends would make a static object look floating). Pixels just above the ground whose depth
    is the plane's at their row within e^(log_ratio / 2) count as ground (road the ground map missed, which
    would otherwise stand on its own contact and look ever farther up to the horizon); the contact is where
    they end.
    depth float [H,W] metres (> 0); ground bool [H,W]; K 3x3 at this resolution; plane None -> nothing flagged."""
    depth = np.asarray(depth, np.float32)
    ground = np.asarray(ground, bool)
    h, w = depth.shape
    out = np.zeros((h, w), bool)
    if plane is None or log_ratio <= 0:
        return out
    # rows where a non-ground pixel sits directly on a ground pixel: (u, v of the run's lowest pixel)
    base = ~ground[:-1] & ground[1:]
    vs, us = np.nonzero(base)
    if not len(us):
        return out
    logd = np.log(np.maximum(depth, 1e-6))
    vv, uu = np.mgrid[0:h, 0:w]
    with np.errstate(divide='ignore', invalid='ignore'):
        plane_log = np.log(plane.depth_at(K, uu + 0.5, vv + 0.5))
        road_like = np.isfinite(plane_log) & (np.abs(logd - plane_log) <= log_ratio / 2)
    for u, v in zip(us.tolist(), vs.tolist()):
        while v >= 0 and road_like[v, u] and not ground[v, u]:      # road the ground map missed: still ground
            v -= 1
        if v < 0 or ground[v, u]:
            continue
        zc, zu = plane.depth_at(K, np.array([u + 0.5, u + 0.5]), np.array([v + 1.0, v + 0.0]))
        if not (np.isfinite(zc) and zc > 0 and np.isfinite(zu) and math.log(zu / zc) <= log_ratio / 2):
            continue
        col_ground = ground[:v + 1, u]
        top = int(np.flatnonzero(col_ground)[-1]) + 1 if col_ground.any() else 0
        run = logd[top:v + 1, u][::-1] - math.log(zc)          # from the contact upwards
        far = run >= log_ratio
        first = int(np.argmax(far)) if far.any() else -1
        if not 0 <= first < rows:
            continue
        step = np.abs(np.diff(run))
        jump = np.flatnonzero(step[rows - 1:] > edge) if len(step) >= rows else np.zeros(0, np.int64)
        end = rows + int(jump[0]) if len(jump) else len(run)          # exclusive, counted from the contact
        k = np.flatnonzero(far[:end])
        out[v - k, u] = True
    return out


def _edges(a: np.ndarray, limit) -> np.ndarray:
    """bool [H,W]: pixels with a 4-neighbour farther than `limit` (scalar or [H,W]) in value a ([H,W] or [C,H,W])."""
    a = a if a.ndim == 3 else a[None]
    h, w = a.shape[-2:]
    out = np.zeros((h, w), bool)
    dx = np.abs(a[:, :, 1:] - a[:, :, :-1]).sum(0)
    dy = np.abs(a[:, 1:, :] - a[:, :-1, :]).sum(0)
    lim = np.broadcast_to(np.asarray(limit, np.float32), (h, w))
    cut_x = dx > np.minimum(lim[:, 1:], lim[:, :-1])
    cut_y = dy > np.minimum(lim[1:, :], lim[:-1, :])
    out[:, 1:] |= cut_x
    out[:, :-1] |= cut_x
    out[1:, :] |= cut_y
    out[:-1, :] |= cut_y
    return out


def group_moving_regions(moving: np.ndarray, depth: np.ndarray, flow: np.ndarray, cfg: SeedsStageConfig) -> np.ndarray:
    """int32 [H,W] group ids (0 = not moving): 8-connected components of `moving` (bool [H,W]) after
    removing the pixels on a depth edge (|Δ log depth| > depth_edge; depth float [H,W] metres) or a flow edge
    (|Δ flow| > flow_edge x the flow's magnitude; flow float [C,H,W] px, e.g. flow_prev and flow_next
    stacked); those edge pixels then join the group next to them (two dilations), so groups touch but
    do not merge across an edge."""
    moving = moving.astype(bool)
    groups = np.zeros(moving.shape, np.int32)
    if not moving.any():
        return groups
    logd = np.log(np.maximum(np.asarray(depth, np.float32), 1e-3))
    flow = np.asarray(flow, np.float32)
    mag = np.abs(flow).sum(0)
    cut = _edges(logd, cfg.depth_edge) | _edges(flow, np.maximum(cfg.flow_edge * mag, 1e-6))
    core = moving & ~cut
    n, lab = cv2.connectedComponents(core.astype(np.uint8), connectivity=8)
    groups = lab.astype(np.int32)
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(2):                       # edge pixels join a neighbouring group
        todo = moving & (groups == 0)
        if not todo.any():
            break
        grown = cv2.dilate(groups.astype(np.float32), kernel).astype(np.int32)
        groups = np.where(todo, grown, groups)
    # what is still unassigned (moving pixels only on edges, e.g. thin structures) forms its own groups
    rest = moving & (groups == 0)
    if rest.any():
        m, extra = cv2.connectedComponents(rest.astype(np.uint8), connectivity=8)
        groups = np.where(rest, extra + groups.max(), groups).astype(np.int32)
    return groups


def box_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) inclusive of a bool mask, or None when it is empty."""
    rows = np.flatnonzero(mask.any(1))
    if not len(rows):
        return None
    cols = np.flatnonzero(mask.any(0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def box_area(box) -> int:
    t, b, l, r = box
    return (b - t + 1) * (r - l + 1)


def touches_ground(box, ground: np.ndarray, contact_px: int) -> bool:
    """Whether ground pixels lie in the band from 2 rows above the box's bottom to contact_px rows below it,
    within its columns (or the box reaches the image's bottom edge, where the ground is out of view)."""
    t, b, l, r = box
    h = ground.shape[0]
    if b >= h - 1:
        return True
    return bool(ground[max(t, b - 2):min(h, b + contact_px + 1), l:r + 1].any())


def seed_rule(m: np.ndarray, ground: np.ndarray, cfg: SeedsStageConfig) -> tuple[bool, str]:
    """(kept?, why not) of one group's moving non-ground pixels m (bool [H,W]) under the reference's rules."""
    h, w = m.shape
    area = int(m.sum())
    if area <= max(1, math.ceil(cfg.min_area_fraction * h * w)):
        return False, 'small'
    box = box_of(m)
    if box_area(box) >= cfg.max_box_fraction * h * w:
        return False, 'huge'
    if area / box_area(box) <= cfg.min_fill:
        return False, 'sparse'
    if cfg.require_ground_contact and not touches_ground(box, ground, cfg.contact_px):
        return False, 'floating'
    return True, ''


def seed_masks(groups: np.ndarray, moving: np.ndarray, ground: np.ndarray, cfg: SeedsStageConfig,
               stats: dict | None = None) -> np.ndarray:
    """uint16 [H,W] seed ids (1..n, 0 = none) of one frame (reference §3U 1.3 'seed masks from slots').

    groups: int [H,W] (0 = none); moving, ground: bool [H,W]. Per group, its moving non-ground pixels must
    pass seed_rule; the seed is then every moving non-ground pixel of its box that no other kept group
    owns, closed with a close_px square. Larger seeds are laid down first, so a smaller object in front
    keeps its pixels. `stats` (optional) counts the groups dropped per rule."""
    moving = moving.astype(bool)
    ground = ground.astype(bool)
    free = moving & ~ground
    kept = []
    for g in np.unique(groups[groups > 0]).tolist():
        m = (groups == g) & free
        ok, why = seed_rule(m, ground, cfg)
        if stats is not None:
            stats[why or 'kept'] = stats.get(why or 'kept', 0) + 1
        if ok:
            kept.append((int(m.sum()), g, box_of(m)))
    out = np.zeros(groups.shape, np.uint16)
    owned = np.isin(groups, [g for _, g, _ in kept])
    kernel = np.ones((cfg.close_px, cfg.close_px), np.uint8) if cfg.close_px > 1 else None
    for k, (_, g, (t, b, l, r)) in enumerate(sorted(kept, reverse=True), 1):
        box = np.zeros(groups.shape, bool)
        box[t:b + 1, l:r + 1] = True
        m = box & free & (~owned | (groups == g))
        if kernel is not None:
            m = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool) & box & ~ground
        out[m] = k
    return relabel(out)


def relabel(ids: np.ndarray) -> np.ndarray:
    """uint16 id map with the ids that still have pixels renumbered 1..n (order kept)."""
    present = np.unique(ids[ids > 0])
    lut = np.zeros(int(ids.max()) + 1 if ids.size else 1, np.uint16)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.uint16)
    return lut[ids]
