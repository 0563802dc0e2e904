"""Issue 17 §1: `python -m training run --bags ... --preset ci-tiny --run-dir R`, from robot recordings (real rosbag2
files made from the synthetic generator's bags, see robot_recordings.py) to a deployable model, through the real
command line and real ci-tiny training:

- the full path: three recordings with instance masks, odometry and a depth topic → whole recordings per split,
  all four stages, photometric error per stage and Eigen metrics on test, the deployment commands; a rerun is a
  no-op (nothing imported, trained or rewritten) and `run --config` of the written config is up to date too;
- the mask-free path: one jpeg recording without masks or odometry → stretches by time with a guard, the masks
  learned from it (issue 17 §2: ground, seeds and instances stages after stage 1, objects.masks: learned) and
  all stages on them, said before training and at the end, the instance network exported, a relative final
  model whose node line allows it;
- topic choice: the one-line refusal naming the candidates and the flag, then the flag choosing;
- bad input: one line naming the problem and the fix, nothing written.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynadepth_ros.model_format import read_metadata
from robot_recordings import rewrite_as_robot, synthetic_bags

REPO = Path(__file__).resolve().parents[1]
FAST_STAGE1 = ('--set', 'scene.phases.0.steps=6', '--set', 'scene.phases.1.steps=2', '--set', 'scene.phases.2.steps=4')
# After a dozen stage-1 steps the residual flow is nearly uniform (~0.016 px) and above ci-tiny's 1e-4 px threshold
# everywhere, so the flow-coverage cue would call every learned instance dynamic and stage 3 would find no static
# object to learn from; without it the learned instances are static (the dynamic path is the full path's test).
MASKFREE_LABELS = ('--set', 'objects.labelling.flow_coverage=0')


def training(*args: str, timeout: float = 500) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    return subprocess.run([sys.executable, '-m', 'training', *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _tree_mtimes(root: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob('*') if p.is_file() and not p.name.endswith('.lock')}


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    base = tmp_path_factory.mktemp('synth')
    return {'short': synthetic_bags(base / 'short', sequences=3, frames=14),
            'long': synthetic_bags(base / 'long', sequences=1, frames=40, seed=5)}


@pytest.fixture(scope='module')
def full(sources, tmp_path_factory):
    base = tmp_path_factory.mktemp('full')
    bags = [rewrite_as_robot(b, base / f'drive{i}', masks=True, depth=True, start_offset_s=100.0 * (2 - i))
            for i, b in enumerate(sources['short'])]           # drive2 was recorded first, drive0 last
    run_dir = base / 'runs' / 'robot'
    first = training('run', '--bags', *map(str, bags), '--preset', 'ci-tiny', '--run-dir', str(run_dir),
                     '--set', 'runtime.progress=false', *FAST_STAGE1)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    return {'bags': bags, 'dir': run_dir, 'first': first}


@pytest.fixture(scope='module')
def maskfree(sources, tmp_path_factory):
    base = tmp_path_factory.mktemp('maskfree')
    bag = rewrite_as_robot(sources['long'][0], base / 'drive', odom=False)
    run_dir = base / 'runs' / 'cam'
    first = training('run', '--bags', str(bag), '--preset', 'ci-tiny', '--run-dir', str(run_dir),
                     '--set', 'runtime.progress=false', *FAST_STAGE1, *MASKFREE_LABELS)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    return {'bag': bag, 'dir': run_dir, 'first': first}


# ---- the full path -------------------------------------------------------------------------------------------
def test_full_path_splits_whole_recordings_by_time_and_says_where_they_went(full):
    out = full['first'].stdout
    drive0, drive1, drive2 = (str(b) for b in full['bags'])
    # recorded order drive2, drive1, drive0: the latest recording is the test split
    assert f'train: 14 frames from {drive2} (whole recording' in out
    assert f'val: 14 frames from {drive1} (whole recording' in out
    assert f'test: 14 frames from {drive0} (whole recording' in out
    report = json.loads((full['dir'] / 'recordings_report.json').read_text())
    entries = {s: [p['entry'] for p in report['split'][s]] for s in ('train', 'val', 'test')}
    assert entries == {'train': [drive2], 'val': [drive1], 'test': [drive0]}
    data = full['dir'] / 'data'
    imported = {s: sorted(p.name for p in (data / s).iterdir() if p.is_dir() and not p.name.startswith('.'))
                for s in ('train', 'val', 'test')}
    assert imported == {'train': ['drive2'], 'val': ['drive1'], 'test': ['drive0']}
    assert report['topics'] == {'image': '/front/image_raw/compressed', 'camera_info': '/front/camera_info',
                                'compressed': True, 'odom': '/odom', 'mask': '/front/instance_mask',
                                'depth': '/front/depth', 'lidar': None, 'tf_static': True}


def test_full_path_runs_four_stages_evaluates_and_prints_the_deployment(full):
    out, run_dir = full['first'].stdout, full['dir']
    for i, name in enumerate(('scene', 'objects', 'dsa', 'final'), 1):
        assert f'pipeline: stage {i}/4 {name}' in out
    assert 'min of training left' in out
    photo = json.loads((run_dir / 'photometric_test.json').read_text())
    assert photo['frames'] == 12 and {'identity', 'scene', 'final'} <= set(photo)
    assert all(0 < photo[k] < 1 for k in ('identity', 'scene', 'final'))
    cmp = json.loads((run_dir / 'compare_test.json').read_text())
    assert cmp['stages'] == ['scene', 'final']
    assert cmp['reports']['final']['frames'] == 12          # GT from the depth topic of the test recording
    model = (run_dir / 'final' / 'final.onnx').resolve()
    meta = read_metadata(model)
    assert meta.stage == 'final' and meta.metric is True
    lines = out.splitlines()
    tail = lines[next(i for i, line in enumerate(lines) if line.startswith('model: ')):]
    assert tail[0] == f'model: {model} (metric depth, stage final)'
    assert (f'  depth_node --ros-args -p model_path:={model} -p image_transport:=compressed -r image:=/front/image_raw '
            f'-r camera_info:=/front/camera_info -r instance_mask:=/front/instance_mask') in tail
    assert f'  python -m training bundle --run-dir {run_dir}' in tail
    assert f'  python -m training build-engine {model} --precision fp16' in tail
    assert 'allow_relative_model' not in out
    # with the recording's own masks, stages 2-3 keep the data-mask settings (the contact at the mask's bottom)
    assert 'extend_to_ground' not in (run_dir / 'recordings.yaml').read_text()
    assert 'bottom_edge' not in (run_dir / 'recordings.yaml').read_text()
    assert 'floating_log_ratio' not in (run_dir / 'recordings.yaml').read_text()


def test_rerun_is_a_no_op_and_the_written_config_runs_as_is(full):
    run_dir = full['dir']
    before = _tree_mtimes(run_dir)
    again = training('run', '--bags', *map(str, full['bags']), '--preset', 'ci-tiny', '--run-dir', str(run_dir),
                     '--set', 'runtime.progress=false', *FAST_STAGE1)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for name in ('scene', 'objects', 'dsa', 'final'):
        assert f'{name}: up to date' in again.stdout
    assert 'photometric error on test is up to date' in again.stdout
    assert _tree_mtimes(run_dir) == before        # nothing imported, trained, evaluated or rewritten
    by_config = training('run', '--config', str(run_dir / 'recordings.yaml'), '--run-dir', str(run_dir),
                         '--set', 'runtime.progress=false', *FAST_STAGE1)
    assert by_config.returncode == 0, by_config.stderr[-3000:]
    assert 'final: up to date' in by_config.stdout and 'scene: up to date' in by_config.stdout


# ---- the mask-free path --------------------------------------------------------------------------------------
MASK_STAGES = ('scene', 'ground', 'seeds', 'instances', 'objects', 'dsa', 'final')


def test_without_masks_it_learns_them_says_so_and_runs_every_stage(maskfree):
    out, run_dir = maskfree['first'].stdout, maskfree['dir']
    warn = out.index('stages 2-4 (objects, dsa, final) need instance masks')
    assert 'so it learns them from the recordings (objects.masks: learned' in out
    assert warn < out.index('pipeline: stage 1/7 scene')
    for i, name in enumerate(MASK_STAGES, 1):
        assert f'pipeline: stage {i}/7 {name}' in out
    assert 'masks: learned' in (run_dir / 'recordings.yaml').read_text()
    report = json.loads((run_dir / 'recordings_report.json').read_text())
    assert report['masks'] == 'learned' and report['stages'] == ['scene', 'final'] and report['metric'] is False
    assert any('need instance masks' in n for n in report['notes'])
    assert 'instance masks of stages 2-4 were learned from the recordings' in out
    photo = json.loads((run_dir / 'photometric_test.json').read_text())
    assert {'identity', 'scene', 'final'} <= set(photo)


def test_the_learned_masks_are_where_stage_2_reads_them_and_stage_2_used_them(maskfree):
    import cv2

    run_dir = maskfree['dir']
    learned = run_dir / 'masks' / 'instances'
    scene_counts = json.loads((run_dir / 'scene' / 'manifest.json').read_text())['predictions']['counts']
    for split in ('train', 'val'):
        pngs = sorted((learned / split).rglob('*.png'))
        assert len(pngs) == scene_counts[split]                   # one per frame stage 2 labels
        ids = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
        assert ids.dtype == np.uint16 and ids.shape == (64, 192)
    assert sorted((learned / 'test').rglob('*.png'))              # the test split too (for measurements)
    labels = json.loads((run_dir / 'objects' / 'labels' / 'train.json').read_text())
    seen = 0
    for key, labs in labels.items():                              # stage 2's instance ids are the learned ids
        ids = cv2.imread(str(learned / 'train' / f'{key}.png'), cv2.IMREAD_UNCHANGED)
        for lab in labs:
            assert (ids == lab['id']).sum() >= lab['area'] > 0
            seen += 1
    assert seen > 0
    for stage in ('ground', 'seeds', 'instances'):
        manifest = json.loads((run_dir / 'masks' / stage / 'manifest.json').read_text())
        assert manifest['previews'] and all((run_dir / 'masks' / stage / 'previews' / p).is_file()
                                            for p in manifest['previews'])


def test_the_instance_network_is_exported_and_decodes_in_onnx_runtime(maskfree):
    import onnxruntime as ort

    from dynadepth_ros.instance_masks import decode_instances, read_instance_metadata

    path = maskfree['dir'] / 'masks' / 'instances' / 'instances.onnx'
    meta = read_instance_metadata(path)
    assert (meta.input_height, meta.input_width, meta.stage) == (64, 192, 'instances')
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    image = np.random.default_rng(0).random((2, 3, 64, 192), dtype=np.float32)
    depth = np.linspace(2.0, 40.0, 64 * 192, dtype=np.float32).reshape(1, 1, 64, 192).repeat(2, 0)
    fg, centre, offset, ground = session.run(None, {'image': image, 'depth': depth})
    assert fg.shape == centre.shape == ground.shape == (2, 1, 64, 192) and offset.shape == (2, 2, 64, 192)
    assert 0 <= fg.min() and fg.max() <= 1 and 0 <= ground.min() and ground.max() <= 1
    ids, scores = decode_instances(fg[0, 0], centre[0, 0], offset[0], score_threshold=meta.score_threshold,
                                   foreground_threshold=meta.foreground_threshold, centre_kernel=meta.centre_kernel,
                                   min_area=meta.min_area())
    assert ids.shape == (64, 192) and ids.dtype == np.uint16 and len(scores) == int(ids.max())
    assert f'learned instance network: {path.resolve()}' in maskfree['first'].stdout


def test_without_odometry_the_model_is_relative_and_the_node_line_allows_it(maskfree):
    model = (maskfree['dir'] / 'final' / 'final.onnx').resolve()
    assert read_metadata(model).metric is False and read_metadata(model).stage == 'final'
    out = maskfree['first'].stdout
    assert 'no odometry: depth will be relative' in out             # before training, from the plan
    assert (f'  depth_node --ros-args -p model_path:={model} -p image_transport:=compressed -r image:=/front/image_raw '
            f'-r camera_info:=/front/camera_info -p allow_relative_model:=true') in out
    assert 'instance_mask:=' not in out                              # no mask topic to give the node
    from training.config import load_config
    written = load_config(config_file=maskfree['dir'] / 'recordings.yaml')
    assert written.scene.model.odometry_weight == 0.1 and 'scene:' not in (maskfree['dir'] / 'recordings.yaml').read_text()
    md = (maskfree['dir'] / 'recordings_report.md').read_text()
    assert 'RELATIVE' in md and 'learned from the recordings' in md


def test_one_recording_is_cut_into_stretches_with_a_guard_and_no_shared_frames(maskfree):
    report = json.loads((maskfree['dir'] / 'recordings_report.json').read_text())
    assert report['split']['mode'] == 'stretches'
    stamps = {}
    for split in ('train', 'val', 'test'):
        [seq] = [p for p in (maskfree['dir'] / 'data' / split).iterdir() if p.is_dir() and not p.name.startswith('.')]
        stamps[split] = np.loadtxt(seq / 'stamps.txt', ndmin=1)
    assert len(stamps['train']) + len(stamps['val']) + len(stamps['test']) == 40 - 2      # a guard frame per cut
    period = 0.1
    assert stamps['train'].max() + 1.5 * period < stamps['val'].min()                      # a frame left out between
    assert stamps['val'].max() + 1.5 * period < stamps['test'].min()
    assert min(len(v) for v in stamps.values()) >= 3


def test_the_mask_free_rerun_reuses_the_import(maskfree):
    data = maskfree['dir'] / 'data'
    before = _tree_mtimes(data)
    again = training('run', '--bags', str(maskfree['bag']), '--preset', 'ci-tiny', '--run-dir', str(maskfree['dir']),
                     '--set', 'runtime.progress=false', *FAST_STAGE1, *MASKFREE_LABELS)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for name in MASK_STAGES:
        assert f'{name}: up to date' in again.stdout
    assert _tree_mtimes(data) == before


# ---- topic choice and bad input (nothing is trained: `init` and refusals stop before) ----------------------------
def _refused(args, run_dir: Path) -> str:
    r = training(*args, timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr                 # one line
    assert not run_dir.exists()                      # nothing half-written
    return lines[0]


def test_ambiguous_topics_are_refused_with_the_candidates_and_the_flag(sources, tmp_path):
    bag = rewrite_as_robot(sources['long'][0], tmp_path / 'two', second_camera=True, second_odom=True)
    run_dir = tmp_path / 'run'
    line = _refused(('init', '--bags', str(bag), '--preset', 'ci-tiny', '--run-dir', str(run_dir)), run_dir)
    assert 'several camera topics' in line and '/front/image_raw/compressed' in line and '/rear/image_raw' in line
    assert '--image-topic' in line
    line = _refused(('init', '--bags', str(bag), '--preset', 'ci-tiny', '--run-dir', str(run_dir),
                     '--image-topic', '/rear/image_raw'), run_dir)
    assert 'several odometry' in line and '/wheel/odom' in line and '--odom-topic' in line
    ok = training('init', '--bags', str(bag), '--preset', 'ci-tiny', '--run-dir', str(run_dir),
                  '--image-topic', '/rear/image_raw', '--odom-topic', '/wheel/odom', timeout=120)
    assert ok.returncode == 0, ok.stderr
    text = (run_dir / 'recordings.yaml').read_text()
    assert 'image_topic: /rear/image_raw' in text and 'camera_info_topic: /rear/camera_info' in text
    assert 'odom_topic: /wheel/odom' in text


@pytest.mark.parametrize('case, kwargs, expect', [
    ('backwards', {'backwards_at': 5}, ['go backwards', 'message 5', 'cut the recording at the jump']),
    ('static', {'static': True}, ['no camera motion', 'travels 0.00 m', 'record while driving']),
    ('static_no_odom', {'static': True, 'odom': False}, ['no camera motion', 'optical flow', 'record while driving']),
    ('no_camera_info', {'camera_info': False}, ['no usable image / camera_info pairing', '--camera-info-topic']),
    ('two_frames', {'frames': 2}, ['only 2 camera frame(s)', 'triplet', 'record longer']),
])
def test_bad_recordings_are_refused_in_one_line_before_anything_is_written(sources, tmp_path, case, kwargs, expect):
    bag = rewrite_as_robot(sources['short'][0], tmp_path / case, **kwargs)
    run_dir = tmp_path / 'run'
    line = _refused(('run', '--bags', str(bag), '--preset', 'ci-tiny', '--run-dir', str(run_dir)), run_dir)
    for text in expect:
        assert text in line, line


def test_no_image_topic_and_wrong_topic_types_are_refused(sources, tmp_path):
    from bag_builders import write_depth_recording

    depth_only = write_depth_recording(tmp_path / 'depth_only', [10**18 + k * 10**8 for k in range(5)],
                                       [np.ones((4, 6), np.float32)] * 5)
    run_dir = tmp_path / 'run'
    line = _refused(('run', '--bags', str(depth_only), '--preset', 'ci-tiny', '--run-dir', str(run_dir)), run_dir)
    assert 'no camera image topic' in line and '/depth' in line and '--image-topic' in line
    bag = rewrite_as_robot(sources['short'][0], tmp_path / 'robot')
    line = _refused(('run', '--bags', str(bag), '--preset', 'ci-tiny', '--run-dir', str(run_dir),
                     '--odom-topic', '/front/camera_info'), run_dir)
    assert 'carries sensor_msgs/msg/CameraInfo' in line and 'nav_msgs/msg/Odometry' in line and '--odom-topic' in line


def test_dry_run_writes_only_the_config(sources, tmp_path):
    bag = rewrite_as_robot(sources['long'][0], tmp_path / 'drive')
    run_dir = tmp_path / 'run'
    r = training('run', '--bags', str(bag), '--preset', 'ci-tiny', '--run-dir', str(run_dir), '--dry-run', timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ['recordings.yaml']
    text = (run_dir / 'recordings.yaml').read_text()
    assert 'extends: ci-tiny' in text and f'{bag}@' in text and 'mask_topic: null' in text and 'masks: learned' in text
    # without masks, stage 2 also labels by the optical cue (the learned masks' movers have no residual flow) and
    # stage 3 reads the ground contact below the learned masks, which stop short of a car's bottom, and takes the
    # anchor of a car whose contact is out of view as an upper bound; the seeds also take objects stage 1 put far
    # behind their contact with the road (a vehicle at the camera's speed)
    from training.config import load_config
    written = load_config(config_file=run_dir / 'recordings.yaml')
    assert written.objects.labelling.optical_log_ratio == 0.7 and written.dsa.extend_to_ground
    assert written.dsa.bottom_edge == 'cap' and written.masks.seeds.floating_log_ratio == 0.6
    # with odometry the odometry term weighs 1.0, not the preset's 0.1: at 0.1 a from-scratch stage 1 can run its
    # depth to max_depth in its first steps (cpu-small on robot recordings: 2 of 2 seeds; 0 of 3 at 1.0)
    assert 'odom_topic: /odom' in text and written.scene.model.odometry_weight == 1.0
    assert load_config(preset='ci-tiny').scene.model.odometry_weight == 0.1


def test_time_split_of_whole_recordings_and_stretches():
    from training.recordings.checks import RecordingFacts
    from training.recordings.time_split import split_by_time

    def rec(name, start_s, n):
        return RecordingFacts(Path(name), (np.arange(n) * 100_000_000 + int(start_s * 1e9)).astype(np.int64), (4, 6))

    recs = [rec('c', 300, 20), rec('a', 100, 50), rec('d', 400, 10), rec('b', 200, 30)]
    s = split_by_time(recs)
    assert [[p.entry for p in s.pieces[k]] for k in ('train', 'val', 'test')] == [['a', 'b'], ['c'], ['d']]
    one = split_by_time([rec('x', 0, 100)])
    assert one.mode == 'stretches'
    spans = {k: (one.pieces[k][0].first, one.pieces[k][0].stop) for k in ('train', 'val', 'test')}
    assert spans == {'train': (0, 80), 'val': (81, 90), 'test': (91, 100)}
    # the windows in the config select exactly these frames
    t = one.pieces['val'][0].facts.relative_s()
    start, end = one.pieces['val'][0].window
    assert np.flatnonzero((t >= start) & (t < end)).tolist() == list(range(81, 90))
    assert one.pieces['train'][0].window == (None, 7.95) and one.pieces['test'][0].window == (9.05, None)
