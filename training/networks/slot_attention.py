"""Slot attention over residual flow and depth: the reference's grouping of moving regions (§3U 1.1), smaller.

Input (slot_inputs, numpy): 4 channels per frame and direction — the residual flow colour-coded (hue =
direction, saturation = magnitude over the frame's largest, value 1, so still pixels are white), zero flow
where the pixel is not moving, scaled to [-1, 1]; and the reference's depth transform (D / max D, exp(.) - 1,
non-moving pixels set to the maximum, divided by the maximum).

Network (SlotAutoEncoder): 4 conv 5x5 (LeakyReLU) + soft position embedding + LayerNorm + 2-layer MLP;
slot attention (Locatello et al. 2020) with `slots` slots of slot_dim, `iterations` rounds, GRU update and
MLP, slot 0 (the background) with its own learned Gaussian initialisation; a spatial-broadcast decoder from
1/8 of the input (3 transposed convs of stride 2, then 2 convs) giving per slot 4 reconstruction channels
(flow through tanh, depth through ReLU) and a mask logit; masks are a softmax over slots.

Loss (slot_loss): MSE of the flow reconstruction (1) and the depth (depth_weight); from `background` on,
background_weight x BCE between slot 0's mask and the non-moving map, and slot 0's reconstruction towards
the constant 1 (flow 1, depth 0.02, as the reference). Left out: the reference's per-slot existence
variable z, switched on only after 20k steps, far beyond the budget here.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def flow_colour(flow: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """float32 [3,H,W] in [-1,1]: flow [2,H,W] colour-coded (still and non-moving pixels white)."""
    fx, fy = np.nan_to_num(flow[0]), np.nan_to_num(flow[1])
    mag = np.hypot(fx, fy) * moving
    top = float(mag.max())
    hsv = np.zeros(flow.shape[1:] + (3,), np.uint8)
    hsv[..., 0] = ((np.degrees(np.arctan2(fy, fx)) % 360.0) / 2.0).astype(np.uint8)
    hsv[..., 1] = np.clip(mag / max(top, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    hsv[..., 2] = 255
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32) / 255.0
    return (rgb.transpose(2, 0, 1) * 2.0 - 1.0).astype(np.float32)


def depth_channel(depth: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """float32 [1,H,W] in [0,1]: the reference's depth transform (module docstring)."""
    d = np.asarray(depth, np.float32)
    d = np.exp(d / max(float(d.max()), 1e-6)) - 1.0
    top = float(d.max())
    d = np.where(moving, d, top)
    return (d / max(top, 1e-6))[None].astype(np.float32)


def slot_inputs(flow: np.ndarray, depth: np.ndarray, moving: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 [4,h,w] network input of one direction, resized to size (h, w) by area."""
    x = np.concatenate([flow_colour(flow, moving), depth_channel(depth, moving)])
    h, w = size
    return np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_AREA) for c in x]).astype(np.float32)


class SoftPositionEmbed(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.proj = nn.Linear(4, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,C,H,W] + a linear map of the grid (y, x, 1-y, 1-x)."""
        h, w = x.shape[-2:]
        ys = torch.linspace(0, 1, h, device=x.device)
        xs = torch.linspace(0, 1, w, device=x.device)
        gy, gx = torch.meshgrid(ys, xs, indexing='ij')
        grid = torch.stack([gy, gx, 1 - gy, 1 - gx], -1)
        return x + self.proj(grid).permute(2, 0, 1)[None]


class SlotAttention(nn.Module):
    def __init__(self, slots: int, dim: int, iterations: int = 3, hidden: int = 128, eps: float = 1e-8):
        super().__init__()
        self.slots, self.dim, self.iterations, self.eps = slots, dim, iterations, eps
        self.scale = dim ** -0.5
        self.mu = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.log_sigma = nn.Parameter(torch.zeros(1, 1, dim))
        self.bg_mu = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.bg_log_sigma = nn.Parameter(torch.zeros(1, 1, dim))
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.norm_in, self.norm_slots, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs [B,N,dim] → slots [B,slots,dim] (slot 0: the background's initialisation)."""
        b = inputs.shape[0]
        fg = self.mu + self.log_sigma.exp() * torch.randn(b, self.slots - 1, self.dim, device=inputs.device)
        bg = self.bg_mu + self.bg_log_sigma.exp() * torch.randn(b, 1, self.dim, device=inputs.device)
        slots = torch.cat([bg, fg], 1)
        inputs = self.norm_in(inputs)
        k, v = self.k(inputs), self.v(inputs)
        for _ in range(self.iterations):
            prev = slots
            q = self.q(self.norm_slots(slots))
            attn = torch.softmax(torch.einsum('bkd,bnd->bkn', q, k) * self.scale, dim=1) + self.eps
            attn = attn / attn.sum(-1, keepdim=True)
            updates = torch.einsum('bkn,bnd->bkd', attn, v)
            slots = self.gru(updates.reshape(-1, self.dim), prev.reshape(-1, self.dim)).reshape(b, -1, self.dim)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots


class SlotAutoEncoder(nn.Module):
    """x [B,4,H,W] (H, W divisible by 8) → {'recon' [B,4,H,W], 'masks' [B,K,1,H,W], 'slot_recons' [B,K,4,H,W]}."""

    def __init__(self, slots: int = 5, slot_dim: int = 64, iterations: int = 3, channels: int = 32):
        super().__init__()
        c = channels
        self.encoder = nn.Sequential(*[m for i in range(4) for m in (nn.Conv2d(4 if i == 0 else c, c, 5, padding=2),
                                                                     nn.LeakyReLU(0.1, inplace=True))])
        self.enc_pos = SoftPositionEmbed(c)
        self.enc_mlp = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, slot_dim), nn.ReLU(inplace=True),
                                     nn.Linear(slot_dim, slot_dim))
        self.attention = SlotAttention(slots, slot_dim, iterations)
        self.dec_pos = SoftPositionEmbed(slot_dim)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(slot_dim, c, 5, stride=2, padding=2, output_padding=1), nn.LeakyReLU(0.1, inplace=True),
            nn.ConvTranspose2d(c, c, 5, stride=2, padding=2, output_padding=1), nn.LeakyReLU(0.1, inplace=True),
            nn.ConvTranspose2d(c, c, 5, stride=2, padding=2, output_padding=1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(c, c, 5, padding=2), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(c, 5, 3, padding=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, h, w = x.shape
        if h % 8 or w % 8:
            raise ValueError(f'slot attention input {h}x{w} must divide by 8 (masks.seeds.slots.downsample)')
        f = self.enc_pos(self.encoder(x)).flatten(2).transpose(1, 2)          # [B,HW,C]
        slots = self.attention(self.enc_mlp(f))                               # [B,K,D]
        k = slots.shape[1]
        grid = slots.reshape(b * k, -1, 1, 1).expand(-1, -1, h // 8, w // 8)
        out = self.decoder(self.dec_pos(grid)).reshape(b, k, 5, h, w)
        recons = torch.cat([torch.tanh(out[:, :, :3]), F.relu(out[:, :, 3:4])], 2)
        masks = torch.softmax(out[:, :, 4:5], dim=1)
        return {'recon': (recons * masks).sum(1), 'masks': masks, 'slot_recons': recons}


def slot_loss(model: SlotAutoEncoder, x: torch.Tensor, still: torch.Tensor, depth_weight: float,
              background_weight: float, background: bool) -> tuple[torch.Tensor, dict, dict]:
    """(loss, logs, previews); x [B,4,H,W] inputs, still [B,1,H,W] 1 where the pixel is not moving."""
    out = model(x)
    flow_mse = F.mse_loss(out['recon'][:, :3], x[:, :3])
    depth_mse = F.mse_loss(out['recon'][:, 3:], x[:, 3:])
    loss = flow_mse + depth_weight * depth_mse
    logs = {'flow_mse': float(flow_mse.detach()), 'depth_mse': float(depth_mse.detach())}
    if background:
        bg = out['masks'][:, 0].clamp(1e-4, 1 - 1e-4)
        bce = F.binary_cross_entropy(bg, still)
        rec = out['slot_recons'][:, 0]
        bg_rec = F.mse_loss(rec[:, :3], torch.ones_like(rec[:, :3])) + 0.02 * F.mse_loss(rec[:, 3:], torch.ones_like(rec[:, 3:]))
        loss = loss + background_weight * bce + bg_rec
        logs.update(background_bce=float(bce.detach()), background_recon=float(bg_rec.detach()))
    seg = out['masks'][:1, :, 0].argmax(1, keepdim=True).float() / max(1, out['masks'].shape[1] - 1)
    return loss, logs, {'flow input': (x[:1, :3] + 1) / 2, 'flow recon': (out['recon'][:1, :3].detach() + 1) / 2,
                        'depth input mask': x[:1, 3:], 'slot map': seg}
