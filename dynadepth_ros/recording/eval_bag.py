"""`dynadepth-eval-bag`: depth metrics of a model (or of recorded depth) on a rosbag2 recording or a dataset folder.

    dynadepth-eval-bag BAG --out DIR [--model PATH] [--backend auto]
    dynadepth-eval-bag BAG --gt-lidar-topic /lidar/points --out DIR            # GT from projected lidar
    dynadepth-eval-bag BAG --prediction-bag REC --prediction-topic /depth --out DIR   # evaluate recorded depth
    dynadepth-eval-bag --dataset DIR --layout synthetic --split test --out DIR

Bag flow: pass 1 reads only header stamps (from the CDR bytes) of the image, ground-truth, mask,
camera_info and prediction topics and pairs them one-to-one by stamp (nearest first, within
--slop); pass 2 decodes just the paired messages, runs the inference core the node uses
(dynadepth_ros.inference.DepthEstimator) and feeds dynadepth_ros.metrics. Dataset folders are
read with dynadepth_ros.datasets.open_source, the readers training uses.

Per frame the metrics are computed for all / static / dynamic pixels (dynamic = any instance in
the mask, or only instances flagged as moving when flags are given), median-scaled (one ratio per
frame from all valid pixels) and metric, within (min_depth, max_depth), and per GT-distance bin.
Results go to --out via dynadepth_ros.recording.eval_report; a partial report is written if the run stops
early (error, corrupt bag, Ctrl-C) so what was done is never lost.

This module is the command line; the run is eval_run.run(EvalConfig) (eval_config), pass 1 eval_plan,
pass 2 eval_decode, dataset folders eval_dataset, the accumulation evaluation, the files eval_report.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dynadepth_ros.metrics import MAX_DEPTH, MIN_DEPTH
from dynadepth_ros.recording.bag_reader import BagError
from dynadepth_ros.recording.eval_config import DEFAULT_TOPICS, EvalConfig, EvalError
from dynadepth_ros.recording.eval_run import run
from dynadepth_ros.recording.lidar_projection import LidarProjectionError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='dynadepth-eval-bag', formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description='Depth metrics (Eigen set; all / static / dynamic pixels; median-scaled and metric; by '
                    'distance) of a depth model on a rosbag2 recording (mcap or sqlite3) or a dataset folder. '
                    'Writes report.json, report.md and PNG plots into --out.')
    p.add_argument('bag', nargs='?', help='rosbag2 directory or .mcap/.db3 file (omit with --dataset)')
    p.add_argument('--out', required=True, help='output directory for the report')
    src = p.add_argument_group('dataset folder instead of a bag')
    src.add_argument('--dataset', help='dataset root folder')
    src.add_argument('--layout', default='synthetic', choices=('synthetic', 'kitti', 'cityscapes'))
    src.add_argument('--split', default='test', help='split name or split file (see training docs)')
    model = p.add_argument_group('model')
    model.add_argument('--model', help='ONNX model (default: the bundled model)')
    model.add_argument('--backend', default='auto', choices=('auto', 'tensorrt', 'onnxruntime'))
    model.add_argument('--precision', default='fp32', choices=('fp32', 'fp16'))
    model.add_argument('--prediction-topic', default='',
                       help='evaluate this recorded depth topic (32FC1/16UC1) instead of running a model')
    model.add_argument('--prediction-bag', help='bag holding --prediction-topic (default: BAG), e.g. a '
                                                'dynadepth-replay recording of the live node')
    topics = p.add_argument_group('topics (defaults: the synthetic bag)')
    topics.add_argument('--image-topic', default=DEFAULT_TOPICS['image'])
    topics.add_argument('--camera-info-topic', default=DEFAULT_TOPICS['camera_info'], help="'' for none")
    topics.add_argument('--mask-topic', default=DEFAULT_TOPICS['mask'],
                        help="instance-id image topic; '' to evaluate all pixels only")
    gt = topics.add_mutually_exclusive_group()
    gt.add_argument('--gt-depth-topic', default=DEFAULT_TOPICS['gt_depth'], help='GT depth image topic')
    gt.add_argument('--gt-lidar-topic', default='', help='PointCloud2 topic projected into the camera as GT '
                                                         '(extrinsics from --tf-static-topic)')
    topics.add_argument('--tf-static-topic', default='/tf_static')
    dyn = p.add_argument_group('dynamic region').add_mutually_exclusive_group()
    dyn.add_argument('--moving-ids-from', metavar='DIR',
                     help='sequence folder (dataset layout) whose instances/*.json moving flags define dynamic')
    dyn.add_argument('--dynamic-from-mask', action='store_true',
                     help='dynamic = every instance in the mask (the default for bags)')
    ev = p.add_argument_group('evaluation')
    ev.add_argument('--max-depth', type=float, default=MAX_DEPTH, help='depth cap, metres')
    ev.add_argument('--min-depth', type=float, default=MIN_DEPTH, help='metres')
    ev.add_argument('--bin-size', type=float, default=10.0, help='distance-bin width, metres')
    ev.add_argument('--slop', type=float, default=0.02, help='stamp pairing tolerance, seconds')
    ev.add_argument('--max-frames', type=int, default=0, help='stop after this many frames (0 = all)')
    ev.add_argument('--samples', type=int, default=4, help='sample strips in samples.png')
    ev.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    if bool(args.bag) == bool(args.dataset):
        raise EvalError('give either a BAG or --dataset DIR (not both)')
    if args.max_depth <= args.min_depth or args.min_depth < 0:
        raise EvalError(f'--min-depth {args.min_depth} / --max-depth {args.max_depth}: need 0 <= min < max')
    if args.bin_size <= 0 or args.slop < 0 or args.max_frames < 0:
        raise EvalError('--bin-size must be > 0, --slop and --max-frames >= 0')
    if args.dataset and (args.prediction_topic or args.gt_lidar_topic):
        raise EvalError('--prediction-topic and --gt-lidar-topic apply to bags, not to --dataset')
    if args.prediction_bag and not args.prediction_topic:
        raise EvalError('--prediction-bag needs --prediction-topic (the recorded depth topic, e.g. /depth)')
    return EvalConfig(
        out=args.out, bag=args.bag, dataset=args.dataset, layout=args.layout, split=args.split,
        image_topic=args.image_topic, camera_info_topic=args.camera_info_topic, mask_topic=args.mask_topic,
        gt_depth_topic=args.gt_depth_topic, gt_lidar_topic=args.gt_lidar_topic, tf_static_topic=args.tf_static_topic,
        prediction_bag=args.prediction_bag, prediction_topic=args.prediction_topic, model=args.model,
        backend=args.backend, precision=args.precision, moving_ids_from=args.moving_ids_from,
        dynamic_from_mask=args.dynamic_from_mask, min_depth=args.min_depth, max_depth=args.max_depth,
        bin_size=args.bin_size, slop=args.slop, max_frames=args.max_frames, samples=args.samples,
        progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except EvalError as exc:
        print(f'dynadepth-eval-bag: error: {exc}', file=sys.stderr)
        return 2
    from dynadepth_ros.recording.eval_report import format_summary
    try:
        report = run(cfg)
    except KeyboardInterrupt:
        print(f'dynadepth-eval-bag: interrupted; partial report in {cfg.out}', file=sys.stderr)
        return 130
    except (BagError, EvalError, LidarProjectionError) as exc:
        print(f'dynadepth-eval-bag: error: {exc}\n(report of what was done: {cfg.out}/report.json)', file=sys.stderr)
        return 1
    print(format_summary(report))
    print(f'report: {Path(cfg.out) / "report.md"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
