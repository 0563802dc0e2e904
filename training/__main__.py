"""`python -m training <command>`: the training pipeline's command line.

    python -m training presets [--show NAME]
    python -m training prepare-data --preset ci-tiny                  # generate / import the data only
    python -m training scene --preset cpu-small [--run-dir runs/cpu-small] [--set scene.loop.batch_size=4]
    python -m training objects --preset cpu-small --run-dir runs/cpu-small     # stage 2 (needs scene)
    python -m training dsa --preset cpu-small --run-dir runs/cpu-small         # stage 3 (needs objects)
    python -m training run --preset cpu-small --run-dir runs/cpu-small         # every stage, resuming/skipping
                                         # (--set export.int8=true: then final/final_int8.onnx, training/quantize.py;
                                         #  with --set distill.decoder=relu_zero the distilled distill/distill_int8.onnx)
    python -m training evaluate --run-dir runs/cpu-small --stage dsa --split val  # labels, DSA, pseudo labels
    python -m training final --preset cpu-small --run-dir runs/cpu-small       # stage 4 (needs dsa)
    python -m training distill --run-dir runs/cpu-small --set distill.decoder=relu_zero   # optional: INT8-friendly final
    python -m training compare --run-dir runs/cpu-small --split test           # stage 1 vs final, side by side
    python -m training export --run-dir runs/cpu-small --stage scene --out scene.onnx
    python -m training bundle --run-dir runs/cpu-small      # install final + stage-1 ONNX as the node's models
    python -m training build-engine runs/cpu-small/final/final.onnx --precision fp16   # on the Jetson
    python -m training quantize runs/cpu-small/final/final.onnx --calib data/synthetic/cpu-small --out int8.onnx
    python -m training evaluate --run-dir runs/cpu-small --stage scene --split test
    python -m training evaluate-masks --run-dir runs/robot --split val --masks instances  # learned vs data masks
    python -m training import-bag run1/ run2.mcap --out data/robot --image-topic /camera/image_raw \\
        --camera-info-topic /camera/camera_info [--odom-topic /odom] [--mask-topic ...]
    python -m training run --bags run1/ run2/ run3/ --preset cpu-small --run-dir runs/robot   # recordings → model
    python -m training init --bags run1/ run2/ --preset cpu-small --run-dir runs/robot        # only write its config

Multi-GPU: `torchrun --nproc_per_node N -m training scene --preset kitti`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.stages import STAGES


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument('--preset', help='preset name (python -m training presets lists them)')
    g.add_argument('--config', type=Path, help='YAML config file (same schema as a preset; may `extends:` one)')
    p.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                   help='override one value, e.g. --set scene.loop.batch_size=4 --set scene.phases.0.steps=100')


def _recording_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """`--bags` and the topic choices of a run on recordings (training/recordings/)."""
    g = p.add_argument_group('recordings (one command from rosbag2 recordings to a deployable model)')
    g.add_argument('--bags', nargs='+', type=Path, required=required, metavar='BAG',
                   help='rosbag2 recordings (directories or .mcap/.db3): topics picked when unambiguous, imported '
                        'once into <run-dir>/data, split into train/val/test by time')
    for flag, what in (('--image-topic', 'camera Image or CompressedImage'), ('--camera-info-topic', 'its CameraInfo'),
                       ('--odom-topic', 'nav_msgs/Odometry (metric scale)'),
                       ('--mask-topic', 'instance-id label Image (stages 2-4)'),
                       ('--depth-topic', 'GT depth Image (evaluation)'), ('--lidar-topic', 'PointCloud2 (evaluation)')):
        g.add_argument(flag, help=f'{what}; needed only when the recordings leave a choice')
    g.add_argument('--no-odom', action='store_true', help='train without odometry (relative depth)')
    g.add_argument('--no-mask', action='store_true', help='ignore instance masks (learn them instead: objects.masks: learned)')


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='python -m training', description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split('\n\n', 1)[1])
    sub = ap.add_subparsers(dest='command', required=True)

    p = sub.add_parser('presets', help='list the presets (or print one resolved)')
    p.add_argument('--show', metavar='NAME', help='print the resolved configuration of a preset')

    p = sub.add_parser('prepare-data', help="generate (synthetic) or import (rosbag) a config's data, then stop")
    _config_args(p)

    for spec in STAGES.values():   # one subcommand per registered stage
        p = sub.add_parser(spec.name, help=spec.summary)
        _config_args(p)
        p.add_argument('--run-dir', type=Path, help=f'run directory (default runs/<config name>); the stage writes '
                                                    f'<run-dir>/{spec.folder or spec.name}/')
        p.add_argument('--restart', action='store_true', help="delete this stage's outputs and train from scratch")

    p = sub.add_parser('run', help='the whole pipeline: every stage in order, each resuming where it stopped and '
                                   'skipping when its inputs did not change')
    _config_args(p)
    p.add_argument('--run-dir', type=Path, help='run directory (default runs/<config name>)')
    p.add_argument('--until', choices=list(STAGES), help='stop after this stage')
    p.add_argument('--restart-from', choices=list(STAGES),
                   help="delete this stage's and every later stage's outputs first")
    p.add_argument('--no-evaluate', action='store_true',
                   help='skip the evaluation after the last stage (method on val, stage 1 vs final on test)')
    _recording_args(p)
    p.add_argument('--dry-run', action='store_true', help='with --bags: check the recordings, write '
                                                           '<run-dir>/recordings.yaml and stop (as `init`)')

    p = sub.add_parser('init', help='check recordings, pick their topics, split them by time and write the config '
                                    '`run --bags` would use (<run-dir>/recordings.yaml) without importing or training')
    p.add_argument('--preset', required=True, help='the training budget (python -m training presets lists them)')
    p.add_argument('--run-dir', type=Path, help='run directory (default runs/<first recording\'s name>)')
    p.add_argument('--out', type=Path, help='write the config there (default <run-dir>/recordings.yaml)')
    _recording_args(p, required=True)

    p = sub.add_parser('export', help="export a finished stage's depth network to ONNX (design §3 format)")
    p.add_argument('--run-dir', type=Path, required=True)
    p.add_argument('--stage', default='scene', choices=sorted(n for n, s in STAGES.items() if s.has_depth_model))
    p.add_argument('--out', type=Path, required=True, help='ONNX file to write')
    p.add_argument('--max-batch', type=int, help='largest batch of the dynamic axis (default: config export.max_batch)')

    p = sub.add_parser('evaluate', help="Eigen depth metrics of a finished stage (all/static/dynamic/lead cars) "
                                        "next to the mean-train-depth baseline")
    p.add_argument('--run-dir', type=Path, required=True)
    p.add_argument('--stage', default='scene', choices=sorted(n for n, s in STAGES.items() if not s.learned_masks_only),
                   help='a stage with a depth network (scene): depth metrics; objects or dsa: labelling '
                        'precision/recall, DSA scale error and pseudo labels against stage 1 (split default val)')
    p.add_argument('--split', choices=('train', 'val', 'test'), help='default: test (val for objects/dsa)')
    p.add_argument('--device', default='auto', help='auto | cpu | cuda[:N]')
    p.add_argument('--batch-size', type=int)

    p = sub.add_parser('evaluate-masks', help="learned masks (objects.masks: learned) against the data's own masks: "
                                              "recall / precision of moving objects at IoU >= 0.5 by object size "
                                              "(needs data with masks and moving flags, e.g. synthetic)")
    p.add_argument('--run-dir', type=Path, required=True)
    p.add_argument('--split', default='val', choices=('train', 'val', 'test'))
    p.add_argument('--masks', default='instances', choices=('instances', 'seeds'),
                   help='the learned instance masks (what stage 2 reads) or the seeds they were trained on')
    p.add_argument('--iou', type=float, default=0.5, help='IoU at which a learned mask and a data instance match')

    p = sub.add_parser('compare', help='evaluate finished stages with depth networks side by side (default scene vs '
                                       'final on the test split)')
    p.add_argument('--run-dir', type=Path, required=True)
    p.add_argument('--stages', nargs='+', default=['scene', 'final'],
                   choices=sorted(n for n, s in STAGES.items() if s.has_depth_model))
    p.add_argument('--split', default='test', choices=('train', 'val', 'test'))
    p.add_argument('--device', default='auto', help='auto | cpu | cuda[:N]')

    p = sub.add_parser('trace', help="follow a split's objects through the pipeline: labelled dynamic or missed "
                                     "(stage 2), scale in stage 1, in the pseudo label (stage 3) and in the final "
                                     "network (stage 4), and how much of the label it took up")
    p.add_argument('--run-dir', type=Path, required=True)
    p.add_argument('--split', default='val', choices=('train', 'val'), help='a split stages 2-3 ran on (default val)')
    p.add_argument('--model', type=Path, help="an exported final model to trace instead of the run's stage 4")
    p.add_argument('--max-frames', type=int, help='evenly spaced frames of the split (default: all)')

    p = sub.add_parser('build-engine', add_help=False,
                       help='build the TensorRT engine of an ONNX model ahead of time into the node\'s engine cache '
                            '(on the target GPU; same as dynadepth-build-engine, see --help)')
    p.add_argument('engine_args', nargs=argparse.REMAINDER)

    p = sub.add_parser('bundle', help="install a finished run's final and stage-1 models as the package's bundled "
                                      "models (node default) with a training report")
    p.add_argument('--run-dir', type=Path, required=True)
    p.add_argument('--dest', type=Path, help='write there instead of dynadepth_ros/models/')
    p.add_argument('--made-with', default='', help='the command that made the run (quoted in the report)')
    p.add_argument('--int8', action='store_true', help="also ship the run's final/final_int8.onnx (export.int8 or "
                                                       "`quantize`) beside the final model")

    p = sub.add_parser('quantize', help='static INT8 (QDQ) copy of an exported model, calibrated on frames of a '
                                        'dataset folder or a rosbag2 and checked against the float model')
    p.add_argument('model', type=Path, help='design §3 ONNX model (float)')
    p.add_argument('--calib', type=Path, required=True, help='dataset folder (fixed layout) or rosbag2 (dir, .mcap, .db3)')
    p.add_argument('--out', type=Path, help='INT8 model to write (default <model>_int8.onnx beside it)')
    p.add_argument('--image-topic', help='camera topic of a rosbag2 source (Image or CompressedImage)')
    p.add_argument('--layout', default='synthetic', choices=('synthetic', 'kitti', 'cityscapes'),
                   help='dataset folder layout')
    p.add_argument('--split', default='train', help='dataset split (synthetic: train|val|test; kitti/cityscapes: a '
                                                    'split name or file)')
    p.add_argument('--target', default='cpu', choices=('cpu', 'tensorrt'),
                   help='cpu: uint8 activations, ONNX Runtime CPU fast path; tensorrt: symmetric int8 (TensorRT)')
    p.add_argument('--format', default='qdq', choices=('qdq', 'qoperator'),
                   help='qdq (ONNX Runtime and TensorRT) or qoperator (ONNX Runtime CPU only, faster there)')
    p.add_argument('--calibration', default='minmax', choices=('minmax', 'entropy', 'percentile'),
                   help='activation range method')
    p.add_argument('--per-tensor', action='store_true', help='one weight scale per tensor (default per channel)')
    p.add_argument('--exclude', action='append', default=[], metavar='NODE|OP|ALIAS',
                   help='also keep these nodes in float (repeatable); aliases first-conv, head, depth-out, input-norm, full-res')
    p.add_argument('--no-default-exclude', action='store_true',
                   help='quantize the depth conversion after the last convolution too (kept float by default)')
    p.add_argument('--frames', type=int, default=64, help='calibration frames (evenly spaced over the source)')
    p.add_argument('--holdout', type=int, default=16, help='held-out frames for the check against FP32')
    p.add_argument('--aspect-tolerance', type=float, default=0.05,
                   help="the node's aspect_tolerance (preprocessing: resize within it, else centre crop)")
    p.add_argument('--max-abs-rel', type=float, default=0.03,
                   help='largest mean |int8 - fp32| / fp32 on the held-out frames at which the model is written')
    p.add_argument('--force', action='store_true', help='write the model even when the check fails')

    p = sub.add_parser('import-bag', help='convert rosbag2 recordings into the dataset layout for training')
    p.add_argument('bags', nargs='+', type=Path, help='rosbag2 directories or .mcap/.db3 files')
    p.add_argument('--out', type=Path, required=True, help='dataset root to write <out>/<split>/<sequence>/ into')
    p.add_argument('--split', default='train', choices=('train', 'val', 'test'))
    p.add_argument('--image-topic', required=True, help='sensor_msgs/Image or CompressedImage topic')
    p.add_argument('--camera-info-topic', required=True)
    p.add_argument('--mask-topic', help='instance-id label image topic (optional)')
    p.add_argument('--odom-topic', help='nav_msgs/Odometry topic (optional; gives metric scale)')
    p.add_argument('--depth-topic', help='GT depth image topic (optional; for evaluation)')
    p.add_argument('--every-nth', type=int, default=1, help='keep every n-th camera frame')
    return ap


def _set_threads(n: int) -> None:
    import torch
    if n > 0:
        torch.set_num_threads(n)


def cmd_presets(args) -> int:
    from training.config import dump_yaml, load_config, preset_description, preset_names

    if args.show:
        print(dump_yaml(load_config(preset=args.show)), end='')
        return 0
    for name in preset_names():
        print(f'{name:<12} {preset_description(name)}')
    return 0


def cmd_prepare_data(args) -> int:
    from training.config import load_config
    from training.data import prepare_data

    cfg = load_config(args.preset, args.config, args.overrides)
    print(f'data ready under {prepare_data(cfg.data)}')
    return 0


def _run_stages(args, names: list[str] | None) -> int:
    from training.config import load_config
    from training.distributed import init_distributed, shutdown_distributed
    from training.pipeline import run_pipeline
    from training.stages.runner import run_stage

    cfg = load_config(args.preset, args.config, args.overrides)
    _set_threads(cfg.runtime.threads)
    dist = init_distributed(cfg.runtime.device)
    try:
        run_dir = args.run_dir or Path('runs') / cfg.name
        if names is None:
            run_pipeline(cfg, run_dir, dist, until=args.until, restart_from=args.restart_from,
                         evaluate=not args.no_evaluate, device=str(dist.device))
            if cfg.export.int8 and args.until in (None, 'final', 'distill') and dist.is_main:
                from training.quantize import quantize_run
                quantize_run(cfg, run_dir, log=lambda text: print(f'pipeline: {text}', flush=True))
        else:
            for name in names:
                run_stage(name, cfg, run_dir, dist, restart=args.restart)
    finally:
        shutdown_distributed()
    return 0


def cmd_stage(args) -> int:
    return _run_stages(args, [args.command])


def cmd_run(args) -> int:
    if args.bags:
        if args.config is not None:
            from training.config import ConfigError
            raise ConfigError('--bags takes --preset (the budget); a config file written by `init` already names '
                              'its recordings: run it with --config alone')
        from training.recordings.bag_run import run_bags
        return run_bags(args, lambda a: _run_stages(a, None))
    return _run_stages(args, None)


def cmd_init(args) -> int:
    from training.recordings.bag_run import cmd_init as init
    return init(args)


def cmd_export(args) -> int:
    from training.export import export_depth_onnx
    from training.stages import get_stage

    stage_dir = args.run_dir / args.stage
    mod = get_stage(args.stage).load()
    depth_net, cfg, manifest = mod.load_depth_net(stage_dir)
    _set_threads(cfg.runtime.threads)
    meta = mod.model_metadata(cfg, manifest['config_hash'], manifest['metric'], manifest['intrinsics'])
    frames = _check_frames(cfg)
    report = export_depth_onnx(depth_net, args.out, meta, opset=cfg.export.opset, frames=frames,
                               max_batch=args.max_batch or cfg.export.max_batch, tolerance=cfg.export.tolerance)
    print(f'wrote {args.out} ({report["bytes"] / 1e6:.1f} MB, {cfg.data.height}x{cfg.data.width}, batch 1..'
          f'{report["max_batch"]}, {"metric" if meta.metric else "relative"} depth); torch vs ONNX Runtime on '
          f'{report["real_frames"]} real frames + {len(report["batch_sizes"]) - (report["real_frames"] + 1) // 2} '
          f'fixed inputs: max relative difference {report["max_rel_diff"]:.2e} (tolerance {cfg.export.tolerance:g}), '
          f'max {report["max_abs_diff"]:.2e} m')
    return 0


def _check_frames(cfg):
    """A few real frames of the run's data for the export check (val, else test, else train split), or
    None with a warning when the data is not on this machine."""
    from dynadepth_ros.datasets.base import DatasetError
    from training.data import build_dataset
    from training.export import sample_frames

    for split in ('val', 'test', 'train'):
        if not cfg.data.split_name(split):
            continue
        try:
            return sample_frames(build_dataset(cfg.data, split, augment=False))
        except (DatasetError, ValueError, OSError):
            continue
    print(f'warning: no frames of {cfg.data.root} found; checking the export on fixed synthetic inputs only',
          file=sys.stderr)
    return None


def cmd_evaluate(args) -> int:
    from training.distributed import resolve_device
    from training.evaluate import evaluate, markdown_report

    if not STAGES[args.stage].has_depth_model:
        from training.evaluate_dsa import evaluate_method, method_markdown

        split = args.split or 'val'
        report = evaluate_method(args.run_dir, split, progress=True)
        print(method_markdown(report), end='')
        print(f'wrote {args.run_dir / "dsa" / f"method_eval_{split}.json"} and .md')
        return 0
    args.split = args.split or 'test'
    report = evaluate(args.run_dir, args.stage, args.split, device=str(resolve_device(args.device)),
                      batch_size=args.batch_size)
    print(markdown_report(report), end='')
    print(f'wrote {args.run_dir / args.stage / f"eval_{args.split}.json"} and .md')
    return 0


def cmd_evaluate_masks(args) -> int:
    from training.masks.evaluate import evaluate_masks, masks_markdown
    from training.stages import stage_dir

    report = evaluate_masks(args.run_dir, args.split, args.masks, args.iou)
    print(masks_markdown(report), end='')
    print(f'wrote {stage_dir(args.run_dir, args.masks) / f"eval_{args.split}.md"} and .json')
    return 0


def cmd_compare(args) -> int:
    from training.distributed import resolve_device
    from training.evaluate import compare_markdown, compare_stages

    cmp = compare_stages(args.run_dir, tuple(args.stages), args.split, device=str(resolve_device(args.device)))
    print(compare_markdown(cmp), end='')
    print(f'wrote {args.run_dir / f"compare_{args.split}.md"} and .json')
    return 0


def cmd_trace(args) -> int:
    from training.object_trace import trace, trace_markdown

    report = trace(args.run_dir, args.split, args.model, args.max_frames)
    print(trace_markdown(report), end='')
    print(f'wrote {args.run_dir / "dsa" / f"object_trace_{args.split}.json"} and .md')
    return 0


def cmd_import_bag(args) -> int:
    from training.data.rosbag_import import import_bags

    seqs = import_bags(list(args.bags), args.out, args.image_topic, args.camera_info_topic,
                       mask_topic=args.mask_topic, odom_topic=args.odom_topic, every_nth=args.every_nth,
                       depth_topic=args.depth_topic, split=args.split)
    for s in seqs:
        print(s)
    print(f'{len(seqs)} sequence(s) under {args.out / args.split}. To train on them: data.source=rosbag, '
          f'data.root={args.out} and the same bags under data.rosbag.bags.{args.split} (imports are cached, so '
          f'training reuses these).')
    return 0


def cmd_quantize(args) -> int:
    from training.quantize import DEFAULT_EXCLUDE, QuantizeError, check_float_model, describe_check, int8_path, \
        open_calibration, quantize_model

    if args.frames < 1 or args.holdout < 1 or not args.max_abs_rel > 0:
        raise QuantizeError('--frames and --holdout must be >= 1 and --max-abs-rel > 0')
    meta = check_float_model(args.model)
    out = args.out or int8_path(args.model)
    frames = open_calibration(args.calib, meta.input_height, meta.input_width, image_topic=args.image_topic,
                              layout=args.layout, split=args.split, frames=args.frames, holdout=args.holdout,
                              aspect_tolerance=args.aspect_tolerance)
    report = quantize_model(args.model, out, frames, target=args.target, method=args.calibration,
                            per_channel=not args.per_tensor,
                            exclude=[*(() if args.no_default_exclude else DEFAULT_EXCLUDE), *args.exclude], max_abs_rel=args.max_abs_rel,
                            force=args.force, fmt=args.format)
    check = report['check']
    print(f'check on {check["frames"]} held-out frames: {describe_check(check)}'
          + ('' if check['passed'] else f' -- OVER --max-abs-rel {args.max_abs_rel:g}, written because of --force'))
    print(f'wrote {out} ({Path(out).stat().st_size / 1e6:.1f} MB, int8 {args.target}); the node runs it with '
          f'model_path:={out}' + (' backend:=tensorrt precision:=int8' if args.target == 'tensorrt' else ''))
    return 0


def cmd_bundle(args) -> int:
    from training.bundle import bundle

    out = bundle(args.run_dir, args.dest, args.made_with, int8=args.int8)
    print(f"bundled {out['model']} and {out['baseline']}" + (f" and {out['int8']}" if 'int8' in out else '')
          + f" ({out['bytes'] / 1e6:.1f} MB); report {out['report']}")
    return 0


COMMANDS = {'init': cmd_init, 'bundle': cmd_bundle, 'quantize': cmd_quantize, 'presets': cmd_presets, 'prepare-data': cmd_prepare_data, 'run': cmd_run, 'export': cmd_export,
            'evaluate': cmd_evaluate, 'evaluate-masks': cmd_evaluate_masks, 'compare': cmd_compare, 'trace': cmd_trace, 'import-bag': cmd_import_bag, **{name: cmd_stage for name in STAGES}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['build-engine']:       # its own parser (argparse.REMAINDER would swallow --help wrongly)
        from dynadepth_ros.engine_builder import main as build_main
        return build_main(argv[1:])
    args = build_parser().parse_args(argv)
    from training.loop import flush_denormals
    flush_denormals()          # predictions and exports too, not only train()
    from dynadepth_ros.datasets.base import DatasetError
    from training.checkpoint import CheckpointError
    from training.config import ConfigError
    from training.export import ExportError

    from dynadepth_ros.recording.bag_reader import BagError
    from training.data.rosbag_import import RosbagImportError

    from training.stages.runner import StageError

    from training.bundle import BundleError
    from dynadepth_ros.model_format import ModelFormatError

    from dynadepth_ros.atomic_files import DiskFullError
    from training.quantize import QuantizeError

    from training.recordings import RecordingError

    known = (ConfigError, DatasetError, CheckpointError, ExportError, FileNotFoundError, BagError,
             RosbagImportError, StageError, BundleError, ModelFormatError, QuantizeError, RecordingError)
    try:
        return COMMANDS[args.command](args)
    except Exception as exc:
        full = DiskFullError.find(exc)     # also the RuntimeError torch.save raises after a failed write
        if full is not None:
            print(f'python -m training {args.command}: error: {full}; free space and rerun (it resumes from the '
                  f'last checkpoint)', file=sys.stderr)
            return 1
        if isinstance(exc, known):
            print(f'python -m training {args.command}: error: {exc}', file=sys.stderr)
            return 2
        raise


if __name__ == '__main__':
    sys.exit(main())
