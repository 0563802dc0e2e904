"""DepthEstimator: camera image (+ intrinsics) → metric depth in metres at the output size. No rclpy.

    est = DepthEstimator(model_path, backend='auto', precision='fp32')
    depth = est.infer(rgb, K=K, output_size=(h, w))   # float32 [h,w] metres, NaN = invalid

Steps: preprocess (aspect policy, preprocess.py) → backend → clean/clamp to the model's depth range →
focal-length compensation when K is given and the model is metric → resize to the output geometry with NaN
outside the crop (postprocess.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dynadepth_ros.camera import denormalise_intrinsics, scale_intrinsics
from dynadepth_ros.inference.backend import BackendError
from dynadepth_ros.inference.backend_selection import DEFAULT_TOLERANCE, Selection, select_backend
from dynadepth_ros.inference.postprocess import clean_depth, focal_scale, to_output_geometry
from dynadepth_ros.inference.preprocess import CropPlan, plan_crop, to_model_batch
from dynadepth_ros.model_format import ModelMetadata, read_metadata

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / 'models' / 'dynadepth.onnx'
# the stage-1 (scene) model the bundled final model was trained from: the method's baseline
BUNDLED_BASELINE = Path(__file__).resolve().parents[1] / 'models' / 'dynadepth_stage1.onnx'
# the INT8 copy of the bundled final model (ONNX Runtime CPU layout), shipped by `python -m training bundle --int8`
BUNDLED_INT8 = BUNDLED_MODEL.with_name(f'{BUNDLED_MODEL.stem}_int8.onnx')

_log = logging.getLogger('dynadepth_ros.inference')


def default_model_path() -> Path:
    """The bundled model dynadepth_ros/models/dynadepth.onnx; BackendError when it is absent."""
    if not BUNDLED_MODEL.is_file():
        raise BackendError(f'no bundled model; set model_path (looked for {BUNDLED_MODEL}; train and export one '
                           f'with `python -m training`, or pass any design §3 ONNX model)')
    return BUNDLED_MODEL


def baseline_model_path() -> Path:
    """The bundled stage-1 baseline dynadepth_ros/models/dynadepth_stage1.onnx; BackendError when absent."""
    if not BUNDLED_BASELINE.is_file():
        raise BackendError(f'no bundled stage-1 baseline model (looked for {BUNDLED_BASELINE})')
    return BUNDLED_BASELINE


@dataclass
class DepthResult:
    """One image's depth and how it was obtained."""

    depth: np.ndarray           # float32 [h,w] metres (model units if not metric), NaN = invalid
    plan: CropPlan              # how the image was cropped/resized for the model
    focal_scale: float          # f_cam / f_train applied (1.0 without K or for a relative model)
    inference_ms: float         # backend time for the batch this image was part of
    K: np.ndarray               # float64 [3,3] intrinsics of `depth`: the given K rescaled to the output size, or
                                # without K the model's training intrinsics mapped back through the crop plan


class DepthEstimator:
    """Metric depth from RGB images with a design §3 ONNX model on the best available backend."""

    def __init__(self, model_path: str | Path | None = None, backend: str = 'auto', precision: str = 'fp32',
                 engine_cache_dir: str | Path | None = None, fallback: bool = True,
                 trt_tolerance: float = DEFAULT_TOLERANCE, *, engine_path: str | Path | None = None,
                 aspect_tolerance: float = 0.05, max_batch: int = 4, intra_op_threads: int = 0,
                 intra_op_spinning: bool = True,
                 log: Callable[[str], None] | None = None, tensorrt_factory=None, providers=None,
                 progress: Callable[[str], None] | None = None):
        self.model_path = Path(model_path) if model_path else default_model_path()
        self.metadata: ModelMetadata = read_metadata(self.model_path)      # ModelFormatError when unusable
        self.aspect_tolerance = float(aspect_tolerance)
        self.selection: Selection = select_backend(
            self.model_path, self.metadata, backend=backend, precision=precision, fallback=fallback,
            trt_tolerance=trt_tolerance, engine_cache_dir=engine_cache_dir, engine_path=engine_path,
            max_batch=max_batch, intra_op_threads=intra_op_threads, intra_op_spinning=intra_op_spinning,
            log=log or _log.warning,
            tensorrt_factory=tensorrt_factory, providers=providers, progress=progress)
        self._backend = self.selection.backend
        self.backend_name: str = self._backend.name
        self._plans: dict[tuple[int, int], CropPlan] = {}

    @property
    def notes(self) -> list[str]:
        """Why preferred backends were skipped or failed, and precision remarks."""
        return list(self.selection.notes)

    def plan_for(self, height: int, width: int) -> CropPlan:
        """The (cached) CropPlan for images of height x width."""
        key = (int(height), int(width))
        plan = self._plans.get(key)
        if plan is None:
            plan = plan_crop(key[0], key[1], self.metadata.input_height, self.metadata.input_width,
                             self.aspect_tolerance)
            self._plans[key] = plan
        return plan

    def infer(self, rgb: np.ndarray, K: np.ndarray | None = None, output_size: tuple[int, int] | None = None) -> np.ndarray:
        """float32 [h,w] metres (NaN invalid) for uint8 [H,W,3] RGB; K float64 [3,3] at the rgb size or None;
        output_size (h, w), default the rgb size."""
        return self.infer_detailed([rgb], None if K is None else [K], output_size)[0].depth

    def infer_batch(self, rgbs: list[np.ndarray], Ks: list[np.ndarray | None] | None = None,
                    output_size: tuple[int, int] | None = None) -> list[np.ndarray]:
        """One float32 [h,w] depth per image (images may differ in size; output_size applies to all when given)."""
        return [r.depth for r in self.infer_detailed(rgbs, Ks, output_size)]

    def infer_detailed(self, rgbs: list[np.ndarray], Ks: list[np.ndarray | None] | None = None,
                       output_size: tuple[int, int] | list[tuple[int, int] | None] | None = None
                       ) -> list[DepthResult]:
        """DepthResult per image; batches of up to the backend's max_batch go through the backend at once.

        output_size: (h, w) for every image, or a list with one (h, w) or None (= that image's size) per image
        (several cameras of different sizes in one batch)."""
        if Ks is not None and len(Ks) != len(rgbs):
            raise ValueError(f'{len(rgbs)} images but {len(Ks)} intrinsics')
        for im in rgbs:
            if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f'expected uint8 [H,W,3] RGB images, got {getattr(im, "dtype", type(im))} '
                                 f'{getattr(im, "shape", "")}')
        sizes = list(output_size) if isinstance(output_size, list) else [output_size] * len(rgbs)
        if len(sizes) != len(rgbs):
            raise ValueError(f'{len(rgbs)} images but {len(sizes)} output sizes')
        for size in sizes:
            if size is not None and (len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0):
                raise ValueError(f'output_size {size} must be two positive integers (h, w)')
        meta = self.metadata
        plans = [self.plan_for(im.shape[0], im.shape[1]) for im in rgbs]
        K_train = denormalise_intrinsics(meta.intrinsics, meta.input_width, meta.input_height)
        results: list[DepthResult] = []
        step = max(1, int(self._backend.max_batch))
        for start in range(0, len(rgbs), step):
            chunk = slice(start, start + step)
            batch = to_model_batch(rgbs[chunk], plans[chunk])
            t0 = time.perf_counter()
            raw = self._backend.run(batch)
            ms = (time.perf_counter() - t0) * 1e3
            for i, plan in enumerate(plans[chunk], start=start):
                depth = clean_depth(raw[i - start, 0], meta.min_depth, meta.max_depth)
                scale = 1.0
                K = None if Ks is None else Ks[i]
                if K is not None and meta.metric:
                    scale = focal_scale(plan.model_intrinsics(np.asarray(K, np.float64)), meta.intrinsics,
                                        meta.input_height, meta.input_width)
                    depth *= np.float32(scale)
                h, w = (plan.src_h, plan.src_w) if sizes[i] is None else sizes[i]
                if depth.shape == (h, w) and plan.output_window(int(h), int(w)) == (0, 0, int(w), int(h)):
                    out = depth          # the output is the model input geometry: `depth` is already a new array
                else:
                    out = to_output_geometry(depth, plan, int(h), int(w))
                K_src = plan.source_intrinsics(K_train) if K is None else np.asarray(K, np.float64)
                K_out = scale_intrinsics(K_src, int(w) / plan.src_w, int(h) / plan.src_h)
                results.append(DepthResult(out, plan, scale, ms, K_out))
        return results

    def close(self) -> None:
        self._backend.close()
