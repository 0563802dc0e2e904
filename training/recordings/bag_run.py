"""`python -m training run --bags BAG [BAG ...] --preset PRESET --run-dir runs/robot` and `init --bags ...`.

    1. survey and check the recordings, pick the topics, split by time  (plan.py; a refusal writes nothing)
    2. write <run-dir>/recordings.yaml (the config `init` writes; unchanged = untouched) and import the
       recordings once into <run-dir>/data (training/data/rosbag_import.py caches per recording and window)
    3. the stages through the shared runner (resume after a kill, skip when up to date, stage and time left);
       without instance masks the masks are learned (objects.masks: learned: the ground, seeds and instances
       stages after stage 1), said before training, in the report and at the end
    4. evaluation without ground truth (photometric error per stage on test), Eigen metrics when the
       recordings have a depth topic, lidar through dynadepth-eval-bag on whole test recordings
    5. <run-dir>/recordings_report.json/.md and the commands that deploy the model
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from dynadepth_ros.atomic_files import write_text_atomic
from training.recordings import RecordingError
from training.recordings.plan import CONFIG_NAME, RecordingsPlan, config_text, plan_recordings

REPORT_NAME = 'recordings_report'
NO_MASKS = ('stages 2-4 (objects, dsa, final) need instance masks and this run has none (no instance-mask topic, or '
            '--no-mask), so it learns them from the recordings (objects.masks: learned, the paper\'s unsupervised '
            'variant): after stage 1 a ground network from its normals, seed objects where the observed optical flow '
            'disagrees with what stage 1 says a static world would show, and an instance network self-trained on them '
            '(masks/ground, masks/seeds, masks/instances; masks/instances/instances.onnx is that network). A '
            'segmentation node\'s masks are usually better: record them and pass --mask-topic when you can.')


def _say(text: str) -> None:
    print(f'recordings: {text}', flush=True)


def plan_from_args(args) -> RecordingsPlan:
    run_dir = args.run_dir or Path('runs') / Path(args.bags[0]).resolve().name
    return plan_recordings(args.bags, args.preset, run_dir, image=args.image_topic, camera_info=args.camera_info_topic,
                           odom=args.odom_topic, mask=args.mask_topic, depth=args.depth_topic, lidar=args.lidar_topic,
                           no_odom=args.no_odom, no_mask=args.no_mask)


def describe_plan(plan: RecordingsPlan) -> None:
    t = plan.topics
    _say(f'camera {t.image} ({"CompressedImage" if t.compressed else "Image"}) with {t.camera_info}; odometry '
         f'{t.odom or "none"}; instance masks {t.mask or "none"}; depth {t.depth or "none"}; lidar {t.lidar or "none"}'
         f'; /tf_static {"yes" if t.tf_static else "no"}')
    for f in plan.facts:
        s = f.summary()
        _say(f'{f.path}: {s["frames"]} frames, {s["duration_s"]:.1f} s at {s["fps"]} Hz, {f.size[1]}x{f.size[0]}'
             + (f', {s["travel_m"]:.1f} m travelled' if s['travel_m'] is not None else ''))
    _say('split by time: ' + ' | '.join(plan.split.lines()))
    for note in t.notes:
        _say(f'note: {note}')


def _write_config(plan: RecordingsPlan, path: Path) -> bool:
    """Write the config when its content changed (a rerun leaves it untouched); True when written."""
    text = config_text(plan)
    if path.is_file() and path.read_text() == text:
        return False
    write_text_atomic(path, text)
    return True


def cmd_init(args) -> int:
    plan = plan_from_args(args)
    describe_plan(plan)
    path = args.out or plan.run_dir / CONFIG_NAME
    _write_config(plan, Path(path))
    _say(f'wrote {path}; adjust it, then: python -m training run --config {path} --run-dir {plan.run_dir}')
    if plan.masks == 'learned':
        _say(NO_MASKS)
    return 0


def deployment_commands(model: Path, plan_topics: dict, metric: bool, has_final: bool, run_dir: Path,
                        learned_masks: Path | None = None) -> dict:
    """The lines that run, ship and compile the model (what the run prints last)."""
    model = model.resolve()
    image, compressed = plan_topics['image'], plan_topics['compressed']
    node = ['depth_node', '--ros-args', '-p', f'model_path:={model}']
    notes = []
    if compressed:
        base = image[:-len('/compressed')] if image.endswith('/compressed') else None
        if base is None:
            notes.append(f'the node subscribes <image>/compressed; {image} does not end in /compressed, so republish '
                         f'it under such a name')
            base = image
        node += ['-p', 'image_transport:=compressed', '-r', f'image:={base}']
    else:
        node += ['-r', f'image:={image}']
    node += ['-r', f'camera_info:={plan_topics["camera_info"]}']
    if plan_topics.get('mask') and has_final:
        node += ['-r', f'instance_mask:={plan_topics["mask"]}']
    if not metric:
        node += ['-p', 'allow_relative_model:=true']
    out = {'model': str(model), 'metric': metric, 'depth_node': shlex.join(node)}
    if compressed or not metric:
        why = ' and '.join(w for w, c in (('image_transport', compressed), ('allow_relative_model', not metric)) if c)
        out['launch'] = None
        notes.append(f'no launch line: dynadepth.launch.xml has no {why} argument; use the depth_node line (or a '
                     f'parameter file of your own with the launch file\'s preset:=)')
    else:
        launch = ['ros2', 'launch', 'dynadepth_ros', 'dynadepth.launch.xml', f'model_path:={model}', f'image:={image}',
                  f'camera_info:={plan_topics["camera_info"]}']
        if plan_topics.get('mask') and has_final:
            launch.append(f'instance_mask:={plan_topics["mask"]}')
        out['launch'] = shlex.join(launch)
    out['bundle'] = shlex.join(['python', '-m', 'training', 'bundle', '--run-dir', str(run_dir)]) if has_final else None
    if not has_final:
        notes.append('no bundle line: `bundle` ships a final model beside its stage-1 baseline, and this run has no '
                     'final stage')
    out['build_engine'] = shlex.join(['python', '-m', 'training', 'build-engine', str(model), '--precision', 'fp16'])
    out['instance_model'] = str(learned_masks.resolve()) if learned_masks is not None else None
    if learned_masks is not None:
        notes.append(f'the recordings have no mask topic, so the node publishes depth without objects; the learned '
                     f'instance network ({learned_masks.resolve()}: image + depth -> instances, '
                     f'dynadepth_ros/instance_masks.py) is exported for a node that segments on its own')
    out['notes'] = notes
    return out


def _evaluate(plan: RecordingsPlan, cfg, run_dir: Path, stages: tuple[str, ...], device: str) -> dict:
    """Photometric error per stage on test (always), Eigen metrics with a depth topic, lidar on whole recordings."""
    from dynadepth_ros.datasets.base import DatasetError
    from training.artifacts import MANIFEST_NAME
    from training.evaluate import compare_markdown, compare_stages
    from training.recordings.photometric import photometric_errors

    def fresh(out: Path) -> bool:
        try:
            return all(out.stat().st_mtime >= (run_dir / s / MANIFEST_NAME).stat().st_mtime for s in stages)
        except OSError:
            return False

    result: dict = {}
    path = run_dir / 'photometric_test.json'
    if fresh(path):
        result['photometric_test'] = json.loads(path.read_text())
        _say('photometric error on test is up to date (photometric_test.json)')
    else:
        _say(f'photometric error of {", ".join(stages)} on the held-out test split')
        result['photometric_test'] = photometric_errors(run_dir, 'test', stages, device=device)
    p = result['photometric_test']
    _say('photometric error on test (lower is better; unwarped frames = identity): '
         + ', '.join(f'{s} {p[s]:.4f}' for s in ('identity', *stages) if s in p) + f' over {p.get("frames", 0)} frames')
    if plan.topics.depth:
        cmp_path = run_dir / 'compare_test.json'
        if fresh(cmp_path) and set(json.loads(cmp_path.read_text()).get('stages', [])) == set(stages):
            result['eigen_test'] = json.loads(cmp_path.read_text())
            _say('Eigen metrics on test are up to date (compare_test.md)')
        else:
            try:
                result['eigen_test'] = compare_stages(run_dir, stages, 'test', device=device,
                                                      progress=cfg.runtime.progress)
                print(compare_markdown(result['eigen_test']), end='')
            except (DatasetError, ValueError) as exc:
                _say(f'Eigen metrics skipped ({exc})')
    if plan.topics.lidar:
        result['lidar_test'] = _lidar_eval(plan, run_dir, stages)
    if not plan.topics.depth and not plan.topics.lidar:
        _say('no depth or lidar topic: no Eigen metrics (the photometric error is the only figure)')
    return result


def _lidar_eval(plan: RecordingsPlan, run_dir: Path, stages: tuple[str, ...]) -> dict:
    """dynadepth-eval-bag with lidar ground truth on each test piece that is a whole recording."""
    from dynadepth_ros.recording.eval_config import EvalConfig, EvalError
    from dynadepth_ros.recording.eval_run import run as eval_run
    from training.data.rosbag_import import bag_sequence_name

    out = {}
    pieces = plan.split.pieces['test']
    whole = [p for p in pieces if p.window is None]
    if len(whole) < len(pieces):
        _say('lidar: test stretches cut from a recording are not evaluated (dynadepth-eval-bag reads whole '
             'recordings); split with three or more recordings to get lidar metrics')
    for stage in stages:
        model = run_dir / stage / f'{stage}.onnx'
        for p in whole:
            dest = run_dir / 'lidar_eval' / stage / bag_sequence_name(p.facts.path)
            done = dest / 'report.json'
            if done.is_file() and done.stat().st_mtime >= (run_dir / stage / 'manifest.json').stat().st_mtime:
                out.setdefault(stage, {})[str(p.facts.path)] = json.loads(done.read_text()).get('metrics')
                _say(f'lidar evaluation of {stage} on {p.facts.path} is up to date ({dest}/report.md)')
                continue
            ec = EvalConfig(out=str(dest), bag=str(p.facts.path), image_topic=plan.topics.image,
                            camera_info_topic=plan.topics.camera_info, mask_topic=plan.topics.mask or '',
                            gt_lidar_topic=plan.topics.lidar, model=str(model), backend='onnxruntime',
                            dynamic_from_mask=bool(plan.topics.mask), progress=False)
            try:
                report = eval_run(ec)
            except (EvalError, ValueError, OSError) as exc:
                _say(f'lidar evaluation of {stage} on {p.facts.path} failed: {exc}')
                continue
            out.setdefault(stage, {})[str(p.facts.path)] = report.get('metrics')
            _say(f'lidar evaluation of {stage} on {p.facts.path}: {dest}/report.md')
    return out


def _report_markdown(report: dict) -> str:
    lines = [f'# Training on recordings: {report["run_dir"]}', '', f'Preset `{report["preset"]}`; '
             f'stages run: {", ".join(report["stages"])}; instance masks: '
             + ('learned from the recordings (no mask topic)' if report['masks'] == 'learned' else 'the mask topic'), '']
    lines += [f'- depth: {"metric (odometry)" if report["metric"] else "RELATIVE (no odometry: scale-ambiguous)"}',
              f'- topics: `{json.dumps(report["topics"])}`', '', '## Split by time', '']
    lines += [f'- {line}' for line in report['split_lines']]
    p = report['evaluation'].get('photometric_test') or {}
    lines += ['', '## Photometric error on test (no ground truth needed; lower is better)', '',
              '| | ' + ' | '.join(s for s in ('identity', *report['stages']) if s in p) + ' |',
              '|---|' + '---|' * len([s for s in ('identity', *report['stages']) if s in p]),
              '| error | ' + ' | '.join(f'{p[s]:.4f}' for s in ('identity', *report['stages']) if s in p) + ' |',
              '', f'{p.get("frames", 0)} frames; {p.get("error", "")}']
    if report['evaluation'].get('eigen_test'):
        lines += ['', 'Eigen metrics (all / static / dynamic): compare_test.md']
    if report['notes']:
        lines += ['', '## Notes', ''] + [f'- {n}' for n in report['notes']]
    d = report['deploy']
    lines += ['', '## Deploy', '', '```', d['depth_node']] + ([d['launch']] if d['launch'] else []) \
        + ([d['bundle']] if d['bundle'] else []) + [d['build_engine'], '```']
    lines += [f'- {n}' for n in d['notes']]
    return '\n'.join(lines) + '\n'


def run_bags(args, run_stages) -> int:
    """The one command; `run_stages(args)` runs the pipeline of args.config (training.__main__._run_stages)."""
    from training.config import load_config
    from training.distributed import resolve_device
    from training.stages.runner import lock_run_dir

    plan = plan_from_args(args)       # every refusal happens here, before anything is written
    describe_plan(plan)
    learned = plan.masks == 'learned'
    if learned:
        _say(NO_MASKS)
    elif args.until in ('ground', 'seeds', 'instances'):
        raise RecordingError(f'--until {args.until}: the {args.until} stage learns masks for recordings without a mask '
                             f'topic, and these have {plan.topics.mask}; pass --no-mask to learn them anyway')
    config_path = plan.run_dir / CONFIG_NAME
    if args.dry_run:
        _write_config(plan, config_path)
        _say(f'dry run: wrote {config_path}; nothing imported or trained. Run it with: python -m training run '
             f'--config {config_path} --run-dir {plan.run_dir}')
        return 0
    lock_run_dir(plan.run_dir)        # one process per run dir, before anything in it is written
    if _write_config(plan, config_path):
        _say(f'wrote {config_path}')
    args.config, args.preset, args.run_dir = config_path, None, plan.run_dir
    cfg = load_config(config_file=config_path, overrides=args.overrides)
    run_stages(args)
    stages = ('scene',) if args.until == 'scene' else ('scene', 'final') if args.until in (None, 'final') else ()
    evaluation = _evaluate(plan, cfg, plan.run_dir, stages, str(resolve_device(cfg.runtime.device))) if stages else {}
    last = stages[-1] if stages else None
    if last is None:
        _say(f'stopped after --until {args.until}; no model to deploy yet')
        return 0
    manifest = json.loads((plan.run_dir / last / 'manifest.json').read_text())
    metric = bool(manifest.get('metric'))
    model = plan.run_dir / last / f'{last}.onnx'
    instance_model = plan.run_dir / 'masks' / 'instances' / 'instances.onnx' if learned else None
    deploy = deployment_commands(model, plan.topics.as_dict(), metric, last == 'final', plan.run_dir,
                                 instance_model if instance_model is not None and instance_model.is_file() else None)
    notes = list(plan.topics.notes) + ([NO_MASKS] if learned else [])
    report = {'run_dir': str(plan.run_dir), 'preset': plan.preset, 'config': str(config_path),
              'recordings': [f.summary() for f in plan.facts], 'topics': plan.topics.as_dict(),
              'split': plan.split.as_dict(), 'split_lines': plan.split.lines(), 'stages': list(stages),
              'masks': plan.masks, 'metric': metric, 'evaluation': evaluation, 'deploy': deploy,
              'notes': notes}
    for path, text in ((plan.run_dir / f'{REPORT_NAME}.json', json.dumps(report, indent=1) + '\n'),
                       (plan.run_dir / f'{REPORT_NAME}.md', _report_markdown(report))):
        if not path.is_file() or path.read_text() != text:     # a rerun that changed nothing rewrites nothing
            write_text_atomic(path, text)
    print('', flush=True)
    _say(f'report {plan.run_dir / REPORT_NAME}.md')
    if learned:
        _say('the instance masks of stages 2-4 were learned from the recordings (no mask topic): see '
             f'{plan.run_dir / "masks" / "instances" / "previews"} and the report')
    if not metric:
        _say('depth is RELATIVE (no odometry): the model says dynadepth.metric=false and the node needs '
             'allow_relative_model:=true')
    print(f'model: {deploy["model"]} ({"metric" if metric else "relative"} depth, stage {last})')
    print('run it on the robot:')
    print(f'  {deploy["depth_node"]}')
    if deploy['launch']:
        print(f'  {deploy["launch"]}')
    if deploy.get('instance_model'):
        print(f'learned instance network: {deploy["instance_model"]}')
    if deploy['bundle']:
        print('install it as the package\'s bundled model:')
        print(f'  {deploy["bundle"]}')
    print('on a GPU target, build the TensorRT engine ahead of time:')
    print(f'  {deploy["build_engine"]}')
    for n in deploy['notes']:
        print(f'  ({n})')
    sys.stdout.flush()
    return 0
