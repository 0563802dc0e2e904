"""Camera geometry for view synthesis on torch tensors (REP 103 optical frame, pinhole, z-depth).

Conventions used everywhere in training:
- pixel (u, v) = (column, row) of the pixel centre, integers at pixel centres; ``grid_sample`` is
  called with ``align_corners=True`` so those map exactly onto pixels.
- ``T_ref_to_src`` [B,4,4] maps reference-camera points into source camera s (``X_s = R X + t``).
- Residual (independent-object) motion is a pixel displacement in the source view, **added after
  the perspective division**: p_s = π(K T X(p)) + flow(p). The same rule is used for view
  synthesis, mask warping and the exported flow, so a flow of k px moves the sample by k px.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_coordinates(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Homogeneous pixel coordinates float [1,3,H*W]: rows (u, v, 1), row-major over (v, u)."""
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                          torch.arange(width, device=device, dtype=dtype), indexing='ij')
    return torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(height * width, device=device, dtype=dtype)])[None]


def backproject(depth: torch.Tensor, inv_K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points float32 [B,3,H*W] (metres) from depth [B,1,H,W] (z, metres) and inv_K [B,3,3]."""
    b, _, h, w = depth.shape
    rays = inv_K @ pixel_coordinates(h, w, depth.device, depth.dtype)  # [B,3,N]
    return rays * depth.reshape(b, 1, h * w)


class BackprojectDepth(torch.nn.Module):
    """Module form of ``backproject`` with the pixel grid cached for a fixed H x W."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width
        self.register_buffer('pix', pixel_coordinates(height, width), persistent=False)

    def forward(self, depth: torch.Tensor, inv_K: torch.Tensor) -> torch.Tensor:
        b, _, h, w = depth.shape
        if (h, w) != (self.height, self.width):
            raise ValueError(f'BackprojectDepth built for {self.height}x{self.width}, got depth {h}x{w}')
        return (inv_K @ self.pix.to(depth.dtype)) * depth.reshape(b, 1, h * w)


def transform_points(points: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """points [B,3,N] → T[:, :3, :3] @ points + T[:, :3, 3]; [B,3,N]."""
    return T[:, :3, :3] @ points + T[:, :3, 3:]


def project(points: torch.Tensor, K: torch.Tensor, T: torch.Tensor | None = None,
            eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Project points [B,3,N] (optionally transformed by T [B,4,4] first) with K [B,3,3].

    Returns (pix float32 [B,2,N] pixel coordinates (u, v), z float32 [B,1,N] depth in the target
    camera). Points with z <= eps get coordinates computed with z clamped to eps; callers must mask
    them with ``z > eps``.
    """
    if T is not None:
        points = transform_points(points, T)
    cam = K @ points
    z = cam[:, 2:3]
    pix = cam[:, :2] / z.clamp(min=eps)
    return pix, z


def pixels_to_grid(pix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel coordinates [B,2,H*W] → ``grid_sample`` grid [B,H,W,2] in [-1,1] (align_corners=True)."""
    b = pix.shape[0]
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], dtype=pix.dtype, device=pix.device)
    grid = pix * scale.view(1, 2, 1) - 1.0
    return grid.view(b, 2, height, width).permute(0, 2, 3, 1)


def in_image(pix: torch.Tensor, z: torch.Tensor, height: int, width: int, eps: float = 1e-6) -> torch.Tensor:
    """bool [B,1,N]: z > eps and the pixel coordinate lies on the image, [-0.5, W-0.5] x [-0.5, H-0.5]
    (pixel areas, so float noise at the border pixels of an identity warp does not count as outside)."""
    u, v = pix[:, 0:1], pix[:, 1:2]
    return (z > eps) & (u >= -0.5) & (u <= width - 0.5) & (v >= -0.5) & (v <= height - 0.5)


def sample(image: torch.Tensor, pix: torch.Tensor, mode: str = 'bilinear') -> torch.Tensor:
    """Sample image [B,C,Hs,Ws] at pixel coordinates [B,2,H,W] (source pixels) → [B,C,H,W]; border padding."""
    b, _, h, w = pix.shape
    grid = pixels_to_grid(pix.reshape(b, 2, h * w), image.shape[-2], image.shape[-1]).reshape(b, h, w, 2)
    return F.grid_sample(image, grid, mode=mode, padding_mode='border', align_corners=True)


def warp_coordinates(depth: torch.Tensor, K: torch.Tensor, inv_K: torch.Tensor, T_ref_to_src: torch.Tensor,
                     residual_flow: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each reference pixel lands in the source view.

    depth: float32 [B,1,H,W] reference depth (metres); K, inv_K [B,3,3]; T_ref_to_src [B,4,4];
    residual_flow: optional float32 [B,2,H,W] on the reference pixel grid, a displacement in source
    pixels added after the perspective division.
    Returns (pix float32 [B,2,H,W] source pixel coordinates, in_view bool [B,1,H,W]).
    """
    b, _, h, w = depth.shape
    pix, z = project(backproject(depth, inv_K), K, T_ref_to_src)
    pix = pix.view(b, 2, h, w)
    if residual_flow is not None:
        if residual_flow.shape != (b, 2, h, w):
            raise ValueError(f'residual_flow must be [B,2,H,W]={[b, 2, h, w]}, got {list(residual_flow.shape)}')
        pix = pix + residual_flow
    valid = in_image(pix.reshape(b, 2, -1), z, h, w).view(b, 1, h, w)
    return pix, valid


def warp(src_img: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, inv_K: torch.Tensor,
         T_ref_to_src: torch.Tensor, residual_flow: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-warp (view synthesis) a source image into the reference view.

    src_img: float32 [B,C,H,W] source frame s; depth: [B,1,H,W] reference depth (metres);
    K, inv_K [B,3,3] at H x W; T_ref_to_src [B,4,4]; residual_flow optional [B,2,H,W] (reference grid,
    source pixels, added after the division). Returns (warped [B,C,H,W], in_view float32 [B,1,H,W]:
    1 where the sample lies inside the source image and in front of its camera). Out-of-view
    samples take the border value; use ``in_view`` to ignore them.
    """
    pix, valid = warp_coordinates(depth, K, inv_K, T_ref_to_src, residual_flow)
    return sample(src_img, pix), valid.to(src_img.dtype)


def invert_transform(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms T [B,4,4]."""
    R = T[:, :3, :3].transpose(1, 2)
    t = -R @ T[:, :3, 3:]
    out = torch.zeros_like(T)
    out[:, :3, :3] = R
    out[:, :3, 3:] = t
    out[:, 3, 3] = 1.0
    return out


def scale_intrinsics(K: torch.Tensor, factor: float) -> torch.Tensor:
    """K [B,3,3] for an image resized by ``factor`` in both directions, pixel-centre convention
    (u' = factor·(u + 0.5) - 0.5), which is what nearest upsampling by an integer factor does."""
    out = K.clone()
    out[:, :2, :2] *= factor
    out[:, :2, 2] = factor * (K[:, :2, 2] + 0.5) - 0.5
    return out


def splat_to_source(depth_ref: torch.Tensor, K: torch.Tensor, T_ref_to_src: torch.Tensor,
                    values: torch.Tensor | None = None, residual_flow: torch.Tensor | None = None,
                    upsample: int = 3) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward-warp the reference into view s with a z-buffer (nearest surface wins).

    depth_ref: float32 [B,1,H,W] metres (values <= 0 are ignored); K [B,3,3]; T_ref_to_src [B,4,4];
    values: optional float32 [B,C,H,W] carried along (e.g. an instance mask, to find it in frame s);
    residual_flow: optional [B,2,H,W] on the reference grid, source pixels, added after the division
    (the same convention as ``warp``). upsample: each reference pixel is split into upsample² sub-pixels
    (nearest) first, which fills the holes that magnification (moving towards the scene) would leave.
    Returns (depth_src float32 [B,1,H,W] z-depth in camera s, 0 where nothing landed;
    values_src [B,C,H,W] the mean of the values of the winning (nearest) points per pixel, 0 where
    nothing landed, or None). Not differentiable.
    """
    with torch.no_grad():
        b, _, h, w = depth_ref.shape
        if upsample > 1:
            up = lambda x: F.interpolate(x, scale_factor=upsample, mode='nearest')  # noqa: E731
            depth_up, K_up = up(depth_ref), scale_intrinsics(K, float(upsample))
        else:
            up = lambda x: x  # noqa: E731
            depth_up, K_up = depth_ref, K
        pix, z = project(backproject(depth_up, torch.linalg.inv(K_up)), K, T_ref_to_src)
        if residual_flow is not None:
            if residual_flow.shape != (b, 2, h, w):
                raise ValueError(f'residual_flow must be [B,2,H,W]={[b, 2, h, w]}, got {list(residual_flow.shape)}')
            pix = pix + up(residual_flow).reshape(b, 2, -1)
        ui = torch.round(pix[:, 0])
        vi = torch.round(pix[:, 1])
        ok = (depth_up.reshape(b, -1) > 0) & (z[:, 0] > 1e-3) & (ui >= 0) & (ui <= w - 1) & (vi >= 0) & (vi <= h - 1)
        index = ((vi * w + ui).long().clamp(0, h * w - 1)
                 + (torch.arange(b, device=depth_ref.device) * h * w)[:, None]).reshape(-1)
        inv_z = torch.where(ok, 1.0 / z[:, 0].clamp(min=1e-3), torch.zeros_like(z[:, 0])).reshape(-1)
        buffer = torch.zeros(b * h * w, dtype=depth_ref.dtype, device=depth_ref.device)
        buffer.scatter_reduce_(0, index, inv_z, reduce='amax', include_self=True)
        depth_src = torch.where(buffer > 0, 1.0 / buffer.clamp(min=1e-12), torch.zeros_like(buffer)).view(b, 1, h, w)
        if values is None:
            return depth_src, None
        c = values.shape[1]
        winner = ok.reshape(-1) & (inv_z >= buffer[index])
        vals = up(values).reshape(b, c, -1).permute(1, 0, 2).reshape(c, -1)  # [C, B*N]
        total = torch.zeros(c, b * h * w, dtype=values.dtype, device=values.device)
        total.index_add_(1, index[winner], vals[:, winner])
        count = torch.zeros(b * h * w, dtype=values.dtype, device=values.device)
        count.index_add_(0, index[winner], torch.ones_like(index[winner], dtype=values.dtype))
        values_src = (total / count.clamp(min=1)).view(c, b, h, w).permute(1, 0, 2, 3)
        return depth_src, values_src.contiguous()


def forward_splat(depth_ref: torch.Tensor, K: torch.Tensor, T_ref_to_src: torch.Tensor,
                  upsample: int = 3) -> torch.Tensor:
    """Render the reference depth into view s with a z-buffer (nearest surface wins).

    depth_ref: float32 [B,1,H,W] metres (values <= 0 are ignored); K [B,3,3]; T_ref_to_src [B,4,4].
    Returns float32 [B,1,H,W] z-depth in camera s at each source pixel, 0 where nothing landed
    (``splat_to_source`` without values). Not differentiable: it feeds the motion net and visibility tests.
    """
    return splat_to_source(depth_ref, K, T_ref_to_src, upsample=upsample)[0]


def render_reference_in_source(ref_img: torch.Tensor, depth_ref: torch.Tensor, K: torch.Tensor, inv_K: torch.Tensor,
                               T_ref_to_src: torch.Tensor, upsample: int = 3
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference image re-rendered from viewpoint s under a static-scene assumption.

    ref_img [B,C,H,W]; depth_ref [B,1,H,W] metres; K, inv_K [B,3,3]; T_ref_to_src [B,4,4].
    Returns (rendered [B,C,H,W] (0 where nothing of the reference is visible), depth_src [B,1,H,W]
    z-depth in view s from ``forward_splat`` (0 = empty), valid float32 [B,1,H,W]).
    Occlusions are resolved by the z-buffer. No gradient flows through it.
    """
    with torch.no_grad():
        depth_src = forward_splat(depth_ref, K, T_ref_to_src, upsample)
        valid = (depth_src > 0).to(ref_img.dtype)
        pix, _ = warp_coordinates(depth_src, K, inv_K, invert_transform(T_ref_to_src))
        rendered = sample(ref_img, pix) * valid
        return rendered, depth_src, valid


def transfer_flow_to_reference(flow_src: torch.Tensor, depth_src: torch.Tensor, depth_ref: torch.Tensor,
                               K: torch.Tensor, inv_K: torch.Tensor, T_ref_to_src: torch.Tensor,
                               occlusion_tolerance: float = 0.05) -> torch.Tensor:
    """Bring a residual flow defined on view-s pixels back onto the reference pixel grid.

    flow_src: float32 [B,2,H,W], at view-s pixel q the displacement (source pixels) from where the
    rigidly rendered reference content sits to where it really is in frame s; depth_src [B,1,H,W]
    the z-buffer of the rendered reference (``forward_splat``, 0 = empty); depth_ref [B,1,H,W];
    K, inv_K [B,3,3]; T_ref_to_src [B,4,4].
    Each reference pixel p with rigid projection q = π(K T X(p)) takes flow_src bilinearly sampled
    at q, if p is the visible surface there (its depth in view s is within ``occlusion_tolerance``
    (relative) of depth_src at q) and q is inside the image; otherwise 0.
    Returns flow_ref float32 [B,2,H,W] (source-pixel displacements on the reference grid), ready
    for ``warp(..., residual_flow=flow_ref)``. Differentiable w.r.t. ``flow_src`` only.
    """
    b, _, h, w = depth_ref.shape
    with torch.no_grad():
        pix, z = project(backproject(depth_ref, inv_K), K, T_ref_to_src)
        pix = pix.view(b, 2, h, w)
        z = z.view(b, 1, h, w)
        inside = in_image(pix.reshape(b, 2, -1), z.reshape(b, 1, -1), h, w).view(b, 1, h, w)
        zbuf = sample(depth_src, pix, mode='nearest')
        visible = inside & (zbuf > 0) & (z <= zbuf * (1.0 + occlusion_tolerance))
    flow = sample(flow_src, pix)
    return torch.where(visible, flow, torch.zeros_like(flow))
