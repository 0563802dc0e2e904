"""dynadepth-eval-bag end to end on real rosbag2 files with the contract ONNX model (real ONNX Runtime)."""
import json

import numpy as np
import pytest
from bag_builders import FPS, T0_NS, BagSpec, scene_arrays, write_depth_recording, write_eval_bag
from contract_model import make_contract_model

from dynadepth_ros.datasets.layout import Calib, Frame, Instance, SequenceWriter
from dynadepth_ros.metrics import METRIC_NAMES, MODES, MetricAccumulator, evaluate_frame
from dynadepth_ros.recording import eval_bag
from dynadepth_ros.recording.eval_config import EvalConfig
from dynadepth_ros.recording.eval_run import run
from dynadepth_ros.recording.evaluation import Evaluation

REGIONS = ('all', 'static', 'dynamic')


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return make_contract_model(tmp_path_factory.mktemp('model') / 'contract.onnx')


def expected(frames, moving_only=False, max_depth=80.0) -> dict:
    """Metrics computed directly from the known scene (the contract model's exact prediction)."""
    acc = MetricAccumulator()
    for i in frames:
        s = scene_arrays(i)
        dyn = s['labels'] == 1 if moving_only else s['labels'] > 0
        acc.add(evaluate_frame(s['gt'], s['pred'], {'static': ~dyn, 'dynamic': dyn}, max_depth=max_depth))
    return acc.summary()


def assert_metrics_match(report, exp, rel=1e-5):
    for mode in MODES:
        for region in REGIONS:
            got = report['metrics'][mode][region]
            assert got['frames'] == exp[mode][region]['frames'], (mode, region)
            for k in METRIC_NAMES:
                assert got[k] == pytest.approx(exp[mode][region][k], rel=rel, abs=1e-7), (mode, region, k)


def run_cli(args, capsys):
    rc = eval_bag.main([*args, '--no-progress'])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def load(out):
    return json.loads((out / 'report.json').read_text())


def test_model_on_bag_matches_direct_metrics(tmp_path, model, capsys):
    bag = write_eval_bag(tmp_path / 'bag', BagSpec(frames=6))
    rc, out, err = run_cli([str(bag), '--model', str(model), '--out', str(tmp_path / 'r'), '--samples', '2'], capsys)
    assert rc == 0, err
    rep = load(tmp_path / 'r')
    assert rep['status'] == 'complete' and rep['model']['backend']
    assert_metrics_match(rep, expected(range(6)))
    # the scene was built so that metric static AbsRel is exactly 1 - 1/1.2 on the background
    assert rep['metrics']['metric']['static']['abs_rel'] == pytest.approx(1 / 6, rel=1e-4)
    c = rep['counts']
    assert (c['pairs'], c['evaluated'], c['unmatched']['image_without_gt'], c['skipped']) == (6, 6, 0, {})
    assert rep['timing']['frames_per_s'] > 0
    assert len(rep['frames']) == 6 and rep['frames'][1]['stamp'] == pytest.approx(T0_NS * 1e-9 + 1 / FPS)
    bins = rep['by_distance']
    assert bins['bins'][0] == [0.0, 10.0] and bins['metric']['all'][0]['frames'] == 6
    # each distance bin = metrics.evaluate_frame restricted to lo <= GT < hi (frame's own median ratio)
    for k, (lo, hi) in enumerate(bins['bins']):
        acc = MetricAccumulator()
        for i in range(6):
            s = scene_arrays(i)
            with np.errstate(invalid='ignore'):
                in_bin = (s['gt'] >= lo) & (s['gt'] < hi)
            acc.add(evaluate_frame(s['gt'], s['pred'], {'bin': in_bin}))
        exp = acc.summary()
        for mode in MODES:
            got = bins[mode]['all'][k]
            if 'bin' not in exp[mode]:
                assert got is None
                continue
            for name in METRIC_NAMES:
                assert got[name] == pytest.approx(exp[mode]['bin'][name], rel=1e-5), (lo, mode, name)
    for f in ('report.md', 'frames.csv', 'error_by_distance.png', 'abs_rel_over_time.png', 'samples.png'):
        assert (tmp_path / 'r' / f).stat().st_size > 100, f
    md = (tmp_path / 'r' / 'report.md').read_text()
    assert '| metric | dynamic | 6 |' in md and '![samples.png](samples.png)' in md
    assert 'frames/s' in out and 'median_scaled' in out


def test_recorded_prediction_with_latency(tmp_path, capsys):
    bag = write_eval_bag(tmp_path / 'bag', BagSpec(frames=5, storage='sqlite3'))
    keep = [0, 1, 3, 4]                                  # frame 2's depth never arrived
    stamps = [T0_NS + int(i * 1e9 / FPS) for i in keep]
    rec = write_depth_recording(tmp_path / 'rec', stamps, [scene_arrays(i)['pred'] for i in keep],
                                images=[scene_arrays(i)['rgb'] for i in keep], latency_ns=7_000_000)
    rc, out, err = run_cli([str(bag), '--prediction-bag', str(rec), '--prediction-topic', '/depth',
                            '--out', str(tmp_path / 'r')], capsys)
    assert rc == 0, err
    rep = load(tmp_path / 'r')
    assert_metrics_match(rep, expected(keep))
    assert rep['counts']['unmatched']['image_without_prediction'] == 1
    assert rep['latency_ms']['count'] == 4 and rep['latency_ms']['p50'] == pytest.approx(7.0)
    assert 'latency image→depth: p50 7.0 ms' in out


def test_pairing_counts_and_skips(tmp_path, model, capsys):
    spec = BagSpec(frames=6, gt_offset_ns=5_000_000, drop_gt=(2,), extra_gt=2, bad_image_encoding=(4,),
                   corrupt_image=(1,))
    bag = write_eval_bag(tmp_path / 'bag', spec)
    rc, _, err = run_cli([str(bag), '--model', str(model), '--out', str(tmp_path / 'r')], capsys)
    assert rc == 0, err
    rep = load(tmp_path / 'r')
    c = rep['counts']
    assert c['pairs'] == 5 and c['unmatched']['image_without_gt'] == 1 and c['unmatched']['gt_without_image'] == 2
    assert c['skipped'] == {'image_encoding': 1, 'corrupt_message': 1}
    assert any("'nv21'" in e for e in c['skip_examples']) and any('cannot be decoded' in e for e in c['skip_examples'])
    assert c['evaluated'] == 3
    assert_metrics_match(rep, expected([0, 3, 5]))

    # a tolerance below the 5 ms offset pairs nothing: one clear error, report of what was done
    rc, _, err = run_cli([str(bag), '--model', str(model), '--out', str(tmp_path / 'r2'), '--slop', '0.001'], capsys)
    assert rc == 1 and 'could be paired' in err and '--slop 0.001' in err
    assert load(tmp_path / 'r2')['status'] == 'error'


def test_missing_topics_list_the_bag_and_no_mask_mode(tmp_path, model, capsys):
    bag = write_eval_bag(tmp_path / 'bag', BagSpec(frames=3, with_mask=False))
    rc, _, err = run_cli([str(bag), '--model', str(model), '--out', str(tmp_path / 'r')], capsys)
    assert rc == 1
    assert 'no topic /camera/instance_mask' in err and '/camera/depth_gt  sensor_msgs/msg/Image  (3 msgs)' in err
    assert "--mask-topic ''" in err
    rc, _, err = run_cli([str(bag), '--model', str(model), '--mask-topic', '', '--out', str(tmp_path / 'r')], capsys)
    assert rc == 0, err
    rep = load(tmp_path / 'r')
    assert rep['metrics']['metric']['dynamic'] is None and rep['metrics']['metric']['all']['frames'] == 3
    assert rep['dynamic_definition'] == 'no instance masks'


def test_nothing_evaluable_is_an_error(tmp_path, model, capsys):
    bag = write_eval_bag(tmp_path / 'bag', BagSpec(frames=2, bad_image_encoding=(0, 1)))
    rc, _, err = run_cli([str(bag), '--model', str(model), '--out', str(tmp_path / 'r')], capsys)
    assert rc == 1 and 'no frame could be evaluated' in err and "'image_encoding': 2" in err
    assert load(tmp_path / 'r')['counts']['skipped'] == {'image_encoding': 2}


def test_corrupt_bag_is_one_clear_error_with_report(tmp_path, model, capsys):
    bag = write_eval_bag(tmp_path / 'bag', BagSpec(frames=3))
    f = next(bag.glob('*.mcap'))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    rc, out, err = run_cli([str(bag), '--model', str(model), '--out', str(tmp_path / 'r')], capsys)
    assert rc == 1 and err.count('error:') == 1 and 'cannot open bag' in err and 'Traceback' not in err
    rep = load(tmp_path / 'r')
    assert rep['status'] == 'error' and 'truncated' in rep['error'] and rep['counts']['evaluated'] == 0


def test_lidar_ground_truth(tmp_path, model, capsys):
    bag = write_eval_bag(tmp_path / 'bag', BagSpec(frames=3, with_gt_depth=False, with_lidar=True))
    rc, _, err = run_cli([str(bag), '--model', str(model), '--gt-lidar-topic', '/lidar/points',
                          '--out', str(tmp_path / 'r')], capsys)
    assert rc == 0, err
    rep = load(tmp_path / 'r')
    assert rep['source']['gt'] == 'lidar' and rep['counts']['evaluated'] == 3
    m = rep['metrics']['metric']
    assert m['static']['abs_rel'] == pytest.approx(1 / 6, rel=1e-3)        # same scene, sparse GT
    assert m['all']['pixels'] < 0.2 * 3 * 64 * 192                          # every 3rd pixel at most
    # without the camera→lidar extrinsics there is nothing to project with
    bag2 = write_eval_bag(tmp_path / 'bag2', BagSpec(frames=2, with_gt_depth=False, with_lidar=True))
    rc, _, err = run_cli([str(bag2), '--model', str(model), '--gt-lidar-topic', '/lidar/points',
                          '--tf-static-topic', '/tf_other', '--out', str(tmp_path / 'r2')], capsys)
    assert rc == 1 and "no static transform chain from 'lidar' to 'camera_optical'" in err
    rc, _, err = run_cli([str(bag2), '--model', str(model), '--gt-lidar-topic', '/lidar/points',
                          '--tf-static-topic', '/camera/camera_info', '--out', str(tmp_path / 'r2')], capsys)
    assert rc == 1 and 'not tf2_msgs/msg/TFMessage' in err


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """A synthetic-layout dataset of the test scene: root/test/seq0 with moving flags (id 1 moves)."""
    root = tmp_path_factory.mktemp('ds')
    from bag_builders import camera_K, H, W
    with SequenceWriter(root, 'test', 'seq0', Calib(K=camera_K(), height=H, width=W, fps=FPS)) as w:
        for i in range(4):
            s = scene_arrays(i)
            insts = [Instance(1, 'car', True, [5.0, 0, 0]), Instance(2, 'car', False, [0, 0, 0])]
            w.write(Frame(i, s['rgb'], np.nan_to_num(s['gt'], nan=0.0), s['labels'], insts, np.eye(4)))
    seq = root / 'test' / 'seq0'
    (seq / 'stamps.txt').write_text(''.join(f'{(T0_NS + int(i * 1e9 / FPS)) * 1e-9:.9f}\n' for i in range(4)))
    return root


def test_moving_flags_from_sequence(tmp_path, model, dataset, capsys):
    bag = write_eval_bag(tmp_path / 'bag', BagSpec(frames=4))
    rc, _, err = run_cli([str(bag), '--model', str(model), '--moving-ids-from', str(dataset / 'test' / 'seq0'),
                          '--out', str(tmp_path / 'r')], capsys)
    assert rc == 0, err
    rep = load(tmp_path / 'r')
    assert_metrics_match(rep, expected(range(4), moving_only=True))
    assert rep['metrics']['metric']['dynamic']['abs_rel'] == pytest.approx(0.3 / 0.7, rel=1e-4)
    assert 'flagged moving' in rep['dynamic_definition']


def test_dataset_folder_uses_the_training_readers(tmp_path, model, dataset, capsys):
    rc, _, err = run_cli(['--dataset', str(dataset), '--layout', 'synthetic', '--split', 'test',
                          '--model', str(model), '--out', str(tmp_path / 'r')], capsys)
    assert rc == 0, err
    rep = load(tmp_path / 'r')
    assert rep['source']['layout'] == 'synthetic' and rep['counts']['evaluated'] == 4
    assert_metrics_match(rep, expected(range(4), moving_only=True))
    rc, _, err = run_cli(['--dataset', str(dataset), '--split', 'val', '--model', str(model),
                          '--out', str(tmp_path / 'r2')], capsys)
    assert rc == 1 and 'does not exist' in err


def test_interrupt_writes_partial_report(tmp_path, model, monkeypatch):
    bag = write_eval_bag(tmp_path / 'bag', BagSpec(frames=5))
    real_add = Evaluation.add
    calls = []

    def add_then_interrupt(self, frame, index, counts):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(index)
        real_add(self, frame, index, counts)

    monkeypatch.setattr(Evaluation, 'add', add_then_interrupt)
    cfg = EvalConfig(out=str(tmp_path / 'r'), bag=str(bag), model=str(model), progress=False)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    rep = load(tmp_path / 'r')
    assert rep['status'] == 'interrupted' and rep['counts']['evaluated'] == 2 and rep['counts']['planned'] == 5
    assert_metrics_match(rep, expected(range(2)))


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    """One sequence of the project's synthetic generator, with its rosbag2."""
    from dynadepth_ros.synth.generate import generate_split
    root = tmp_path_factory.mktemp('synth')
    [seq] = generate_split(root, 'test', sequences=1, frames=4, height=64, width=192, seed=5, bag=True,
                           workers=1, progress=False)
    return root, seq


def test_synthetic_bag_and_its_dataset_folder_agree(tmp_path, model, synthetic, capsys):
    root, seq = synthetic
    rc, _, err = run_cli([str(seq / 'bag'), '--model', str(model), '--moving-ids-from', str(seq),
                          '--out', str(tmp_path / 'bag')], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(['--dataset', str(root), '--split', 'test', '--model', str(model),
                          '--out', str(tmp_path / 'ds')], capsys)
    assert rc == 0, err
    a, b = load(tmp_path / 'bag'), load(tmp_path / 'ds')
    assert a['counts']['evaluated'] == b['counts']['evaluated'] == 4
    for mode in MODES:
        for region in REGIONS:
            if b['metrics'][mode][region] is None:
                assert a['metrics'][mode][region] is None
                continue
            for k in METRIC_NAMES:
                assert a['metrics'][mode][region][k] == pytest.approx(b['metrics'][mode][region][k], rel=1e-6)
    # GT from the bag's lidar through its tf_static: sparse, same scene
    rc, _, err = run_cli([str(seq / 'bag'), '--model', str(model), '--gt-lidar-topic', '/lidar/points',
                          '--out', str(tmp_path / 'lidar')], capsys)
    assert rc == 0, err
    c = load(tmp_path / 'lidar')
    assert c['counts']['evaluated'] == 4
    assert 0 < c['metrics']['metric']['all']['pixels'] < a['metrics']['metric']['all']['pixels']
