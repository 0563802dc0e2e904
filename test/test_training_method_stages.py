"""The whole pipeline end to end through the real command line on the ci-tiny preset: `python -m
training run` trains stage 1, labels instances, trains the object network and the DSA network,
writes pseudo labels in the design §5 layout and trains and exports the final network; a second
run does nothing; a changed stage 1 makes the later stages out of date; the method evaluation
reads it all back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynadepth_ros.datasets.layout import list_sequences

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def training_cmd(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    return subprocess.run([PY, '-m', 'training', *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp('method')
    run_dir, data = base / 'run', base / 'data'
    common = ('--preset', 'ci-tiny', '--run-dir', str(run_dir), '--set', f'data.root={data}',
              '--set', 'runtime.progress=false')
    first = training_cmd('run', *common)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    return {'dir': run_dir, 'data': data, 'common': common, 'first': first}


def test_pipeline_reports_each_stage(run):
    out = run['first'].stdout
    for i, name in enumerate(('scene', 'objects', 'dsa', 'final'), 1):
        assert f'pipeline: stage {i}/4 {name}' in out
    assert 'objects: train:' in out and 'dynamic' in out
    assert 'dsa: train:' in out and 'pseudo labels' in out
    assert 'min of training left' in out                          # progress says how long is left
    # the run ends with the evaluation: the method on val, stage 1 vs final on test
    assert (run['dir'] / 'dsa' / 'method_eval_val.md').is_file()
    cmp = json.loads((run['dir'] / 'compare_test.json').read_text())
    assert cmp and (run['dir'] / 'compare_test.md').read_text().count('| dynamic |') >= 1
    # the final network's export was checked against torch on real frames of the run's data
    final = json.loads((run['dir'] / 'final' / 'manifest.json').read_text())
    assert final['onnx']['check']['real_frames'] > 0
    assert final['onnx']['check']['max_rel_diff'] <= 1e-3


def test_labels_file_has_the_design_layout(run):
    """objects/labels/<split>.json: {"<seq>/<frame:06d>": [{"id", "label", "area"}, ...]} for every
    train and val triplet centre frame; labelled instances exist in that frame's mask."""
    from dynadepth_ros.datasets.synthetic import SyntheticSource

    for split in ('train', 'val'):
        labels = json.loads((run['dir'] / 'objects' / 'labels' / f'{split}.json').read_text())
        seqs = list_sequences(run['data'], split)
        expected = {f'{s.name}/{i:06d}' for s in seqs for i in range(1, len(s) - 1)}
        assert set(labels) == expected
        n = 0
        src = {s.name: s for s in SyntheticSource(run['data'], split).sequences()}
        for key, items in labels.items():
            seq, frame = key.split('/')
            ids = set(np.unique(src[seq].instance_mask(int(frame))).tolist())
            for it in items:
                assert it['label'] in ('static', 'dynamic')
                assert isinstance(it['id'], int) and it['id'] in ids
                assert isinstance(it['area'], int) and it['area'] > 0
                n += 1
        assert n > 0


def test_mask_triplets_and_object_depth(run):
    from training.stages.outputs import ObjectLabels, ObjectOutputs

    outputs = ObjectOutputs(run['dir'] / 'objects')
    labels = ObjectLabels(run['dir'] / 'objects', 'train')
    checked = 0
    for seq, t, labs in labels.items():
        masks = outputs.masks('train', seq, t)
        depth = outputs.depth('train', seq, t)
        assert set(depth) == {lab.id for lab in labs}          # every labelled instance has object depth
        assert set(masks) <= {lab.id for lab in labs}
        for oid, m in masks.items():
            assert m.shape == (3, 64, 192) and m.dtype == np.uint8
            assert (m.reshape(3, -1).sum(1) > 0).all()
            inside = depth[oid] > 0
            assert (inside == m[1].astype(bool)).all()           # depth exactly on the reference mask
            checked += 1
    assert checked > 0


def test_pseudo_labels_replace_only_dynamic_pixels(run):
    """dsa/pseudo_labels/<split>/<seq>/<frame>.npz: depth float32 [H,W], dynamic bool [H,W]; outside
    the dynamic pixels the label is the stage-1 depth, inside it is not (it came from the DSA)."""
    root = run['dir'] / 'dsa' / 'pseudo_labels'
    files = sorted(root.glob('train/*/*.npz'))
    assert len(files) == len(list((run['dir'] / 'scene' / 'predictions' / 'train').glob('*/*.npz')))
    changed = 0
    for f in files:
        with np.load(f) as z:
            depth, dynamic = z['depth'], z['dynamic']
        with np.load(run['dir'] / 'scene' / 'predictions' / 'train' / f.parent.name / f.name) as z:
            scene = z['depth']
        assert depth.dtype == np.float32 and dynamic.dtype == bool and depth.shape == (64, 192)
        assert np.array_equal(depth[~dynamic], scene[~dynamic])
        assert np.isfinite(depth).all() and (depth > 0).all()
        changed += int(dynamic.any())
    labels = json.loads((run['dir'] / 'objects' / 'labels' / 'train.json').read_text())
    frames_with_dynamic = sum(any(i['label'] == 'dynamic' for i in v) for v in labels.values())
    assert changed == frames_with_dynamic


def test_manifests_chain_upstream_hashes(run):
    scene = json.loads((run['dir'] / 'scene' / 'manifest.json').read_text())
    objects = json.loads((run['dir'] / 'objects' / 'manifest.json').read_text())
    dsa = json.loads((run['dir'] / 'dsa' / 'manifest.json').read_text())
    assert objects['upstream'] == {'scene': scene['config_hash']}
    assert dsa['upstream'] == {'scene': scene['config_hash'], 'objects': objects['config_hash']}
    assert (run['dir'] / 'objects' / 'object_model.pt').is_file()
    assert (run['dir'] / 'dsa' / 'dsa_model.pt').is_file()
    assert any(p.name.startswith('labels_') for p in (run['dir'] / 'objects' / 'previews').iterdir())
    assert any(p.name.startswith('pseudo_') for p in (run['dir'] / 'dsa' / 'previews').iterdir())
    assert (run['dir'] / 'dsa' / 'metrics.csv').is_file()


def test_second_run_does_nothing(run):
    again = training_cmd('run', *run['common'])
    assert again.returncode == 0, again.stderr[-3000:]
    for name in ('scene', 'objects', 'dsa', 'final'):
        assert f'{name}: up to date' in again.stdout
    assert 'stage 1 vs final on test is up to date' in again.stdout


def test_method_evaluation_reads_the_run(run):
    r = training_cmd('evaluate', '--run-dir', str(run['dir']), '--stage', 'dsa', '--split', 'val')
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((run['dir'] / 'dsa' / 'method_eval_val.json').read_text())
    for split in ('train', 'val'):
        lab = report['labelling'][split]
        assert lab['instances'] == lab['true_positive'] + lab['false_positive'] + lab['false_negative'] + \
            lab['true_negative']
    assert report['dsa_static_objects']['objects'] > 0
    assert report['stage1']['metric']['dynamic']['frames'] > 0
    assert '| metric | dynamic |' in r.stdout


def test_trace_follows_each_object_through_the_stages(run):
    from training.object_trace import uptake

    r = training_cmd('trace', '--run-dir', str(run['dir']), '--split', 'val')
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((run['dir'] / 'dsa' / 'object_trace_val.json').read_text())
    assert report['final_source'].endswith('final')
    recs = report['records']
    assert recs and {r['label'] for r in recs} <= {'dynamic', 'static', 'unlabelled'}
    # the pseudo label is the stage-1 depth except on objects labelled dynamic
    same = [r for r in recs if r['label'] != 'dynamic' and r['stage1'] is not None]
    assert same and all(r['pseudo'] == pytest.approx(r['stage1'], rel=1e-4) for r in same)
    assert report['groups']['static']['objects'] + report['groups'].get('moving', {'objects': 0})['objects'] == len(recs)
    assert '| objects | count | labelled dynamic | stage 1 | pseudo label | final | uptake |' in \
        (run['dir'] / 'dsa' / 'object_trace_val.md').read_text()
    # uptake: share of the stage-1 -> pseudo gap the final network closed
    assert uptake(1.2, 1.0, 1.0) == pytest.approx(1.0) and uptake(1.2, 1.0, 1.2) == pytest.approx(0.0)
    assert uptake(1.2, 1.0, 1.3) < 0 and uptake(1.0, 1.01, 0.9) is None
    # stages 2-3 never ran on test: a clear refusal, not a crash
    bad = training_cmd('trace', '--run-dir', str(run['dir']), '--split', 'test')
    assert bad.returncode != 0 and "invalid choice: 'test'" in bad.stderr and 'Traceback' not in bad.stderr


def test_changed_stage1_makes_later_stages_stale(run):
    """Retraining stage 1 (another seed) must not leave stages 2-3 built on the old stage 1 'up to date'."""
    from training.config import load_config
    from training.stages.runner import stage_status

    cfg = load_config(preset='ci-tiny', overrides=[f'data.root={run["data"]}', 'scene.loop.seed=1'])
    assert stage_status('scene', cfg, run['dir'])           # stage 1 itself is stale
    same = load_config(preset='ci-tiny', overrides=[f'data.root={run["data"]}'])
    assert stage_status('objects', same, run['dir']) == []
    assert stage_status('dsa', same, run['dir']) == []
    other = load_config(preset='ci-tiny', overrides=[f'data.root={run["data"]}',
                                                     'objects.labelling.flow_threshold_px=0.9'])
    assert stage_status('objects', other, run['dir'])
    assert stage_status('scene', other, run['dir']) == []


def test_new_stage1_manifest_invalidates_stages_2_and_3(run, tmp_path):
    """A stage 1 that finished again with other results (new manifest hash) makes objects and dsa
    out of date; running objects then starts over (nothing of the old outputs is reused) and dsa,
    which depends on both, is out of date until it runs again."""
    import shutil

    from training.config import load_config
    from training.stages.runner import stage_status

    copy = tmp_path / 'run'
    shutil.copytree(run['dir'], copy)
    manifest = copy / 'scene' / 'manifest.json'
    m = json.loads(manifest.read_text())
    m['config_hash'] = 'retrained000000'
    manifest.write_text(json.dumps(m))
    cfg = load_config(preset='ci-tiny', overrides=[f'data.root={run["data"]}'])
    assert any('config changed' in p for p in stage_status('objects', cfg, copy))
    r = training_cmd('objects', '--preset', 'ci-tiny', '--run-dir', str(copy), '--set', f'data.root={run["data"]}',
                     '--set', 'runtime.progress=false')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'an upstream stage changed' in r.stdout and 'objects: done' in r.stdout
    assert json.loads((copy / 'objects' / 'manifest.json').read_text())['upstream'] == {'scene': 'retrained000000'}
    assert any('config changed' in p for p in stage_status('dsa', cfg, copy))


def test_final_model_is_exported_as_stage_final(run):
    from dynadepth_ros.model_format import read_metadata

    meta = read_metadata(run['dir'] / 'final' / 'final.onnx')
    assert meta.stage == 'final'
    assert (meta.input_height, meta.input_width) == (64, 192)
    final = json.loads((run['dir'] / 'final' / 'manifest.json').read_text())
    dsa = json.loads((run['dir'] / 'dsa' / 'manifest.json').read_text())
    assert final['upstream']['dsa'] == dsa['config_hash']
    rows = (run['dir'] / 'final' / 'metrics.csv').read_text().splitlines()
    assert 'pseudo_loss' in rows[0]


def test_export_int8_ends_the_run_without_retraining_and_bundle_ships_it(run, tmp_path):
    """export.int8: true on a finished run retrains and re-exports nothing (not in any stage's config hash),
    writes final/final_int8.onnx calibrated on the run's train split, is up to date the second time, and
    `bundle --int8` ships it beside the final model."""
    from dynadepth_ros.model_format import read_metadata

    before = {p.name: p.stat().st_mtime_ns for p in (run['dir'] / 'final').glob('*.onnx')}
    args = ('run', *run['common'], '--no-evaluate', '--set', 'export.int8=true', '--set', 'export.int8_max_abs_rel=0.5')
    r = training_cmd(*args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count('up to date') >= 4 and 'int8: wrote' in r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (run['dir'] / 'final').glob('*.onnx') if p.name in before} == before
    int8 = run['dir'] / 'final' / 'final_int8.onnx'
    meta = read_metadata(int8)
    info = json.loads(meta.quantization)
    assert meta.precision == 'int8' and meta.stage == 'final' and 'train split' in info['source']
    again = training_cmd(*args)
    assert again.returncode == 0 and 'int8: up to date' in again.stdout
    dest = tmp_path / 'models'
    r = training_cmd('bundle', '--run-dir', str(run['dir']), '--dest', str(dest), '--int8')
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_metadata(dest / 'dynadepth_int8.onnx').precision == 'int8'
    assert (dest / 'dynadepth_int8.onnx').read_bytes() == int8.read_bytes()
    assert 'INT8 copy' in (dest / 'training_report.md').read_text()


def test_bundle_installs_final_and_stage1_with_a_report(run, tmp_path):
    from dynadepth_ros.model_format import read_metadata

    dest = tmp_path / 'models'
    r = training_cmd('bundle', '--run-dir', str(run['dir']), '--dest', str(dest), '--made-with', 'python -m training run')
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_metadata(dest / 'dynadepth.onnx').stage == 'final'
    assert read_metadata(dest / 'dynadepth_stage1.onnx').stage == 'scene'
    report = (dest / 'training_report.md').read_text()
    assert 'python -m training run' in report and '| dynamic |' in report
    # a final stage from another stage 1 is refused, and nothing is half-written
    other = tmp_path / 'other'
    for stage in ('scene', 'final'):
        (other / stage).mkdir(parents=True)
        for f in (run['dir'] / stage).glob('*.onnx'):
            (other / stage / f.name).write_bytes(f.read_bytes())
    m = json.loads((run['dir'] / 'final' / 'manifest.json').read_text())
    m['upstream']['scene'] = 'not-this-one'
    (other / 'final' / 'manifest.json').write_text(json.dumps(m))
    (other / 'scene' / 'manifest.json').write_text((run['dir'] / 'scene' / 'manifest.json').read_text())
    r = training_cmd('bundle', '--run-dir', str(other), '--dest', str(tmp_path / 'no'))
    assert r.returncode == 2 and 'another stage-1 model' in r.stderr
    assert not (tmp_path / 'no').exists()


def test_distill_stage_trains_an_int8_friendly_final_network_from_the_final_one(run, tmp_path):
    """distill.decoder=relu_zero: the optional stage after stage 4 distils the final network into a ReLU /
    zero-padding decoder (no ELU, no reflection padding in the exported graph: the float islands of an INT8
    model), exports it as a final model, and says how close it is to its teacher; without the setting the
    stage refuses with the flag that enables it."""
    import onnx
    from dynadepth_ros.model_format import read_metadata

    off = training_cmd('distill', *run['common'])
    assert off.returncode != 0 and 'distill.decoder' in off.stdout + off.stderr
    assert not (run['dir'] / 'distill' / 'manifest.json').exists()
    distill = ('--set', 'distill.decoder=relu_zero', '--set', 'distill.phases.0.steps=6',
               '--set', 'distill.loop.batch_size=2')
    r = training_cmd('distill', *run['common'], *distill)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = run['dir'] / 'distill'
    manifest = json.loads((out / 'manifest.json').read_text())
    final = json.loads((run['dir'] / 'final' / 'manifest.json').read_text())
    assert manifest['upstream']['final'] == final['config_hash'] == manifest['teacher']['config_hash']
    assert manifest['agreement_val']['frames'] > 0 and 0 <= manifest['agreement_val']['mean_abs_log_ratio'] < 1
    assert read_metadata(out / 'distill.onnx').stage == 'final'
    ops = {n.op_type for n in onnx.load(str(out / 'distill.onnx')).graph.node}
    assert 'Relu' in ops and 'Elu' not in ops
    pads = [n for n in onnx.load(str(out / 'distill.onnx')).graph.node if n.op_type == 'Pad']
    assert all(a.s != b'reflect' for n in pads for a in n.attribute if a.name == 'mode')
    teacher_ops = {n.op_type for n in onnx.load(str(run['dir'] / 'final' / 'final.onnx')).graph.node}
    assert 'Elu' in teacher_ops
    assert list((out / 'previews').glob('*.png'))
    # export.int8 then quantizes the distilled network (full-res level kept in float), and bundle --int8 ships it
    r = training_cmd('run', *run['common'], *distill, '--no-evaluate', '--set', 'export.int8=true',
                     '--set', 'export.int8_max_abs_rel=0.5')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'distill: up to date' in r.stdout and 'int8: wrote' in r.stdout
    int8 = out / 'distill_int8.onnx'
    info = json.loads(read_metadata(int8).quantization)
    assert 'full-res' in info['exclude_requested'] and info['excluded_nodes']
    from dynadepth_ros.atomic_files import file_sha256
    assert info['float_model_sha256'] == file_sha256(out / 'distill.onnx')
    dest = tmp_path / 'models'
    r = training_cmd('bundle', '--run-dir', str(run['dir']), '--dest', str(dest), '--int8')
    assert r.returncode == 0, r.stderr[-3000:]
    assert (dest / 'dynadepth_int8.onnx').read_bytes() == int8.read_bytes()
    assert 'distilled into a ReLU' in (dest / 'training_report.md').read_text()


def test_optical_cues_in_labelling_and_stage_4_run_through_the_real_stages(run, tmp_path):
    """objects.labelling.optical_log_ratio (the optical cue of the stage-2 labelling) and final.unexplained_motion
    (stage 4 leaves unexplained motion out of the photometric and anchor terms) on a copy of the run: stage 2
    records the cue for every instance, stage 4 writes one unexplained-motion mask per train and val frame,
    previews and the share it flagged, and both are new stages (the options are in their hashes)."""
    import shutil

    import cv2

    copy = tmp_path / 'run'
    shutil.copytree(run['dir'] / 'scene', copy / 'scene', copy_function=os.link)
    common = ('--preset', 'ci-tiny', '--run-dir', str(copy), '--set', f'data.root={run["data"]}',
              '--set', 'runtime.progress=false')
    r = training_cmd('run', *common, '--no-evaluate', '--set', 'objects.labelling.optical_log_ratio=0.01',
                     '--set', 'masks.seeds.optical_min_rigid_px=0.0', '--set', 'final.unexplained_motion=0.01')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'scene: up to date' in r.stdout
    labels = json.loads((copy / 'objects' / 'labels' / 'train.json').read_text())
    cues = [lab for labs in labels.values() for lab in labs]
    assert cues and all('optical_log_ratio' in lab and 'optical_share' in lab for lab in cues)
    assert any('optical' in lab['cues'] for lab in cues)
    final = json.loads((copy / 'final' / 'manifest.json').read_text())
    assert final['training']['unexplained_motion'] == 0.01
    counts = json.loads((run['dir'] / 'scene' / 'manifest.json').read_text())['predictions']['counts']
    for split in ('train', 'val'):
        pngs = sorted((copy / 'final' / 'unexplained' / split).rglob('*.png'))
        assert len(pngs) == counts[split] == final['unexplained_motion'][split]['frames']
        assert cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED).shape == (64, 192)
    assert 0 < final['unexplained_motion']['train']['share'] <= 1
    assert (copy / 'final' / 'previews' / final['unexplained_motion']['previews'][0]).is_file()
    orig = json.loads((run['dir'] / 'final' / 'manifest.json').read_text())
    assert final['config_hash'] != orig['config_hash']
