"""Export a depth network to the design §3 ONNX model, checked against torch before it is written.

The graph maps `image` float32 [N,3,H,W] RGB in [0,1] to `depth` float32 [N,1,H,W] (metres when
metric): normalisation and the sigmoid-disparity → depth conversion are inside. N is dynamic
(1..max_batch), H and W are fixed. Exported with the torch.export-based exporter (opset 18, one
self-contained file), tagged with the dynadepth metadata, validated with
`dynadepth_ros.model_format.read_metadata`, then run in ONNX Runtime on fixed inputs at two batch
sizes, and on real frames of the run's data when given: if any depth differs from torch by more than
the relative tolerance, nothing is written.
"""
from __future__ import annotations

import copy
import io
import os
import time
import warnings
from contextlib import nullcontext, redirect_stdout
from pathlib import Path

import numpy as np
import torch

from dynadepth_ros.atomic_files import atomic_path
from dynadepth_ros.model_format import INPUT_NAME, OUTPUT_NAME, ModelMetadata, read_metadata, write_metadata
from training.networks.depth import DepthExportModule, DepthNet


class ExportError(RuntimeError):
    """The exported model does not reproduce the torch model (or could not be exported at all)."""


def check_inputs(height: int, width: int, batch_sizes=(1, 2), seed: int = 0) -> list[np.ndarray]:
    """Fixed test images float32 [N,3,H,W] in [0,1]: smooth gradients plus texture, one per batch size."""
    rng = np.random.default_rng(seed)
    out = []
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    for n in batch_sizes:
        imgs = []
        for k in range(n):
            base = np.stack([u / width, v / height, 0.5 + 0.5 * np.sin((u + 3 * v) / (7.0 + k))])
            imgs.append(np.clip(0.7 * base + 0.3 * rng.random((3, height, width), dtype=np.float32), 0, 1))
        out.append(np.stack(imgs).astype(np.float32))
    return out


def sample_frames(dataset, n: int = 4) -> np.ndarray | None:
    """float32 [k,3,H,W] RGB in [0,1]: frame t of k <= n evenly spaced samples of an un-augmented triplet
    dataset (real frames for the export check), or None when the dataset is empty."""
    if dataset is None or len(dataset) == 0:
        return None
    idx = np.unique(np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(int))
    return np.stack([dataset[int(i)]['frames_raw'][1].numpy() for i in idx]).astype(np.float32)


def export_depth_onnx(depth_net: DepthNet, out_path: str | os.PathLike, meta: ModelMetadata, *, opset: int = 18,
                      max_batch: int = 16, tolerance: float = 1e-3, verbose: bool = False,
                      frames: np.ndarray | None = None) -> dict:
    """Write `out_path` (atomically) and return {'max_abs_diff', 'batch_sizes', 'seconds', 'bytes', ...}.

    frames: optional real images float32 [k,3,H,W] (e.g. sample_frames of the run's data) checked in
    addition to the fixed inputs, in batches of up to 2; the report gives 'real_frames' (how many)
    and the differences over all inputs.

    tolerance: the largest relative depth difference |onnx - torch| / torch accepted on the check
    inputs (float32 rounding through the 1/disparity conversion is ~1e-6); raises ExportError
    (and writes nothing) beyond it. The report gives max_abs_diff (metres) and max_rel_diff.
    """
    import onnxruntime as ort

    out_path = Path(out_path)
    h, w = int(meta.input_height), int(meta.input_width)
    if h % 32 or w % 32:
        raise ExportError(f'model input {h}x{w} is not a multiple of 32; train at a size such as '
                          f'{max(32, h // 32 * 32)}x{max(32, w // 32 * 32)}')
    if max_batch < 2:
        raise ExportError(f'max_batch must be >= 2 for a dynamic batch axis, got {max_batch}')
    t0 = time.perf_counter()
    module = DepthExportModule(copy.deepcopy(depth_net).cpu().float()).eval()
    example = torch.from_numpy(check_inputs(h, w, (2,))[0])
    with atomic_path(out_path) as tmp:     # renamed into place only when the export passed its check
        batch = torch.export.Dim('batch', min=1, max=int(max_batch))
        sink = io.StringIO()
        try:
            with warnings.catch_warnings(), (nullcontext() if verbose else redirect_stdout(sink)):
                warnings.simplefilter('ignore')
                torch.onnx.export(module, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  opset_version=opset, dynamo=True, external_data=False,
                                  dynamic_shapes=({0: batch},))
        except Exception as exc:
            raise ExportError(f'torch.onnx.export failed ({type(exc).__name__}: {exc}); exporter output:\n'
                              f'{sink.getvalue()[-2000:]}') from exc
        write_metadata(tmp, meta)
        read_metadata(tmp)
        session = ort.InferenceSession(str(tmp), providers=['CPUExecutionProvider'])
        worst = worst_rel = 0.0
        sizes = []
        inputs = check_inputs(h, w, (1, 2))
        n_real = 0
        if frames is not None and len(frames):
            frames = np.ascontiguousarray(frames, np.float32)
            if frames.ndim != 4 or frames.shape[1:] != (3, h, w):
                raise ExportError(f'check frames must be [k,3,{h},{w}], got {frames.shape}')
            inputs += [frames[i:i + 2] for i in range(0, len(frames), 2)]
            n_real = len(frames)
        for x in inputs:
            with torch.no_grad():
                ref = module(torch.from_numpy(x)).numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
            if got.shape != (x.shape[0], 1, h, w) or got.dtype != np.float32:
                raise ExportError(f'ONNX Runtime returned depth {got.dtype} {got.shape}, expected float32 '
                                  f'{(x.shape[0], 1, h, w)}')
            diff = np.abs(got.astype(np.float64) - ref)
            worst = max(worst, float(np.max(diff)))
            worst_rel = max(worst_rel, float(np.max(diff / np.maximum(np.abs(ref), 1e-6))))
            sizes.append(int(x.shape[0]))
        if not np.isfinite(worst_rel) or worst_rel > tolerance:
            raise ExportError(f'the exported model disagrees with torch: max relative depth difference '
                              f'{worst_rel:.3g} (max {worst:.3g} m) > tolerance {tolerance:g}; refusing to write '
                              f'{out_path}')
    return {'max_abs_diff': worst, 'max_rel_diff': worst_rel, 'batch_sizes': sizes, 'real_frames': n_real, 'seconds': time.perf_counter() - t0,
            'bytes': out_path.stat().st_size, 'opset': opset, 'max_batch': int(max_batch)}

