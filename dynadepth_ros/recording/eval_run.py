"""One evaluation run end to end: the model (or a recorded prediction topic), the frames of a bag (eval_plan,
eval_decode) or a dataset folder (eval_dataset), the Evaluation, and the report (eval_report). A partial
report is written if the run stops early (error, corrupt bag, Ctrl-C), so what was done is never lost."""
from __future__ import annotations

import datetime
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dynadepth_ros import __version__
from dynadepth_ros.metrics import MODES
from dynadepth_ros.recording.bag_reader import BagError, BagReader
from dynadepth_ros.recording.eval_config import EvalConfig, EvalError, RunCounts
from dynadepth_ros.recording.eval_dataset import count_dataset_frames, iter_dataset_frames
from dynadepth_ros.recording.eval_decode import iter_bag_frames
from dynadepth_ros.recording.eval_plan import plan_bag
from dynadepth_ros.recording.evaluation import Evaluation
from dynadepth_ros.recording.lidar_projection import LidarProjectionError


def make_estimator(cfg: EvalConfig):
    try:
        from dynadepth_ros.inference import BackendError, DepthEstimator, default_model_path
    except ImportError as exc:
        raise EvalError(f'the inference core is not available ({exc}); reinstall dynadepth_ros') from None
    try:
        path = cfg.model or default_model_path()
        est = DepthEstimator(model_path=path, backend=cfg.backend, precision=cfg.precision)
    except (BackendError, ValueError, FileNotFoundError) as exc:
        raise EvalError(f'cannot load model {cfg.model or "(bundled)"}: {exc}') from None
    return est, str(path)


def run(cfg: EvalConfig) -> dict:
    """Evaluate and write the report into cfg.out; returns the report dict. Partial report on failure."""
    from dynadepth_ros.recording import eval_report

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = RunCounts()
    report: dict = {
        'tool': 'dynadepth-eval-bag', 'version': __version__,
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'status': 'running', 'settings': asdict(cfg),
    }
    evaluation = Evaluation(cfg, set())
    t_start = t_loop = time.perf_counter()
    latency: list = []
    bags: list[BagReader] = []
    status, error, exc_to_raise = 'complete', None, None
    try:
        estimator = None
        CameraInfoError = ValueError
        if not cfg.prediction_topic:
            from dynadepth_ros.inference import CameraInfoError
            estimator, model_path = make_estimator(cfg)
            report['model'] = {'path': model_path, 'backend': estimator.backend_name,
                               'metadata': metadata_dict(estimator.metadata)}
        else:
            report['model'] = {'prediction_topic': cfg.prediction_topic,
                               'prediction_bag': cfg.prediction_bag or cfg.bag}
        if cfg.dataset:
            from dynadepth_ros.datasets import DatasetError, open_source
            try:
                source = open_source(cfg.layout, cfg.dataset, cfg.split)
            except (DatasetError, FileNotFoundError, ValueError) as exc:
                raise EvalError(f'cannot read dataset {cfg.dataset} ({cfg.layout}, split {cfg.split}): {exc}') from None
            total = count_dataset_frames(cfg, source)
            counts.planned = counts.pairs = total
            frames = iter_dataset_frames(cfg, source, counts)
            report['source'] = {'dataset': cfg.dataset, 'layout': cfg.layout, 'split': cfg.split}
            evaluation.dynamic_definition = ('any instance in the mask' if cfg.dynamic_from_mask
                                             else 'instances flagged moving by the dataset (any instance where no flags)')
        else:
            bag = BagReader(cfg.bag).open()
            bags.append(bag)
            pred_bag = bag
            if cfg.prediction_bag and Path(cfg.prediction_bag).resolve() != Path(cfg.bag).resolve():
                pred_bag = BagReader(cfg.prediction_bag).open()
                bags.append(pred_bag)
            plan = plan_bag(cfg, bag, pred_bag if cfg.prediction_topic else None, counts)
            latency = plan.latency_ms
            total = len(plan.frames)
            frames = iter_bag_frames(cfg, bag, pred_bag, plan, counts)
            report['source'] = {'bag': str(cfg.bag), 'gt': cfg.gt_kind,
                                'topics': {'image': cfg.image_topic, 'camera_info': cfg.camera_info_topic,
                                           'mask': cfg.mask_topic, 'gt': cfg.gt_lidar_topic or cfg.gt_depth_topic}}
            evaluation.dynamic_definition = (
                f'instances flagged moving in {cfg.moving_ids_from}' if cfg.moving_ids_from and not cfg.dynamic_from_mask
                else 'any instance in the mask')
            if total == 0:
                raise EvalError(f'no frame of {cfg.image_topic} could be paired with its ground truth within '
                                f'--slop {cfg.slop:g} s ({counts.unmatched}); check the topics and the tolerance')
        if total:
            evaluation.sample_at = set(np.linspace(0, total - 1, min(cfg.samples, total)).round().astype(int).tolist())
        from tqdm import tqdm
        bar = tqdm(total=total, unit='frame', desc='eval', disable=not cfg.progress, dynamic_ncols=True)
        t_loop = time.perf_counter()
        for index, frame in enumerate(frames):
            if frame.pred is None:
                t0 = time.perf_counter()
                size = None if frame.gt.shape == frame.rgb.shape[:2] else frame.gt.shape
                try:
                    frame.pred = estimator.infer(frame.rgb, K=frame.K, output_size=size)
                except CameraInfoError as exc:
                    counts.skip('camera_info_invalid', f'{frame.key}: {exc}')
                    bar.update(1)
                    continue
                evaluation.infer_s += time.perf_counter() - t0
            evaluation.add(frame, index, counts)
            bar.update(1)
            bar.set_postfix(fps=f'{bar.n / max(time.perf_counter() - t_loop, 1e-9):.1f}')
        bar.close()
    except KeyboardInterrupt as exc:
        status, error, exc_to_raise = 'interrupted', 'interrupted by the user (Ctrl-C)', exc
    except (BagError, EvalError, LidarProjectionError) as exc:
        status, error, exc_to_raise = 'error', str(exc), exc
    except Exception as exc:  # write what was done, then let the traceback through
        status, error, exc_to_raise = 'error', f'{type(exc).__name__}: {exc}', exc
    finally:
        for b in bags:
            b.close()
    if status == 'complete' and counts.evaluated == 0:
        error = (f'no frame could be evaluated (planned {counts.planned}, skipped {counts.skipped}); '
                 f'see counts.skip_examples in report.json')
        status, exc_to_raise = 'error', EvalError(error)
    elapsed = time.perf_counter() - t_start
    loop_s = time.perf_counter() - t_loop
    metrics, scale = evaluation.metrics()
    if not evaluation.has_regions:
        for m in MODES:
            metrics[m]['static'] = metrics[m]['dynamic'] = None
    report.update({
        'status': status, 'error': error, 'metrics': metrics, 'scale': scale,
        'by_distance': evaluation.by_distance(),
        'dynamic_definition': evaluation.dynamic_definition if evaluation.has_regions else 'no instance masks',
        'counts': {**asdict(counts)},
        'timing': {'seconds': elapsed, 'loop_seconds': loop_s,
                   'frames_per_s': counts.evaluated / loop_s if loop_s > 0 else None,
                   'inference_ms_mean': 1e3 * evaluation.infer_s / counts.evaluated if counts.evaluated and
                   evaluation.infer_s else None},
        'latency_ms': eval_report.distribution(latency) if latency else None,
        'frames': evaluation.series,
    })
    eval_report.write_report(out, report, evaluation.samples)
    if exc_to_raise is not None:
        raise exc_to_raise
    return report


def metadata_dict(meta) -> dict | None:
    if meta is None:
        return None
    try:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(meta).items()}
    except TypeError:
        return {'repr': repr(meta)}
