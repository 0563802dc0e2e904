"""The stage life cycle without training (training.stages.runner): which settings make a stage out of date,
the refusal to run a stage before the stages it needs, and the command line built from the registry."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from dynadepth_ros.atomic_files import write_json_atomic
from training.__main__ import build_parser
from training.artifacts import MANIFEST_FORMAT
from training.config import load_config
from training.stages import PLANNED_STAGES, STAGES, get_stage
from training.stages.runner import (StageError, lock_run_dir, run_stage, stage_hashes, stage_status,
                                    upstream_manifests)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINGERPRINT = {'hash': 'd0d0d0d0d0d0d0d0', 'files': 10, 'bytes': 1000}


def cfg(*overrides):
    return load_config(preset='ci-tiny', overrides=list(overrides))


def hashes(name, config, upstream=None, fingerprint=FINGERPRINT):
    if upstream is None:
        upstream = {req: {'config_hash': f'{req}-hash-1'} for req in STAGES[name].requires}
    return stage_hashes(get_stage(name).load(), config, fingerprint, upstream)


def test_retrained_upstream_stage_makes_the_stage_out_of_date():
    """objects' hashes follow the scene manifest's config_hash, and only it (not its timestamps etc.)."""
    c = cfg()
    base = hashes('objects', c, {'scene': {'config_hash': 'aaaa', 'created': '2024-01-01'}})
    again = hashes('objects', c, {'scene': {'config_hash': 'aaaa', 'created': '2025-06-30',
                                            'wall_seconds_this_run': 3}})
    assert base == again
    retrained = hashes('objects', c, {'scene': {'config_hash': 'bbbb', 'created': '2024-01-01'}})
    assert retrained.train != base.train and retrained.config != base.config
    # dsa follows both of its upstream stages
    d = hashes('dsa', c, {'scene': {'config_hash': 'aaaa'}, 'objects': {'config_hash': 'cccc'}})
    assert d != hashes('dsa', c, {'scene': {'config_hash': 'aaaa'}, 'objects': {'config_hash': 'dddd'}})
    assert d != hashes('dsa', c, {'scene': {'config_hash': 'eeee'}, 'objects': {'config_hash': 'cccc'}})


def test_hashes_are_stable_for_the_same_settings_and_follow_the_data():
    for name in STAGES:
        assert hashes(name, cfg()) == hashes(name, cfg())
        other_data = dict(FINGERPRINT, hash='e1e1e1e1e1e1e1e1')
        assert hashes(name, cfg(), fingerprint=other_data).train != hashes(name, cfg()).train


def test_a_later_stages_settings_do_not_touch_an_earlier_stage():
    """Changing a labelling threshold re-runs stage 2 (and, through its manifest, stage 3), never stage 1;
    a DSA setting only stage 3."""
    base = cfg()
    labelling = cfg('objects.labelling.flow_threshold_px=0.9')
    assert labelling.objects.labelling.flow_threshold_px == 0.9
    assert hashes('scene', labelling) == hashes('scene', base)
    assert hashes('objects', labelling).train != hashes('objects', base).train
    dsa = cfg('dsa.box_margin_px=5')
    assert hashes('scene', dsa) == hashes('scene', base)
    assert hashes('objects', dsa) == hashes('objects', base)
    assert hashes('dsa', dsa).train != hashes('dsa', base).train
    scene = cfg('scene.loop.batch_size=3')
    assert hashes('scene', scene).train != hashes('scene', base).train


def test_data_location_and_inference_batch_sizes_do_not_make_stages_stale():
    """Moving the data (data.root) or changing a batch size of inference only leaves every stage up to date."""
    base = {name: hashes(name, cfg()) for name in STAGES}
    moved = cfg('data.root=/somewhere/else', 'objects.infer_batch_size=2', 'dsa.infer_batch_size=3')
    assert {name: hashes(name, moved) for name in STAGES} == base


def test_output_settings_change_the_config_hash_but_not_the_weights_hash():
    """Stage 1's prediction splits decide its outputs, not its weights: no retraining, new outputs."""
    base, other = hashes('scene', cfg()), hashes('scene', cfg('scene.predict_splits=[train]'))
    assert other.train == base.train and other.config != base.config


def test_upstream_manifests_refuse_a_stage_whose_inputs_have_not_finished(tmp_path):
    """Stage 2 in an empty run dir: StageError naming the command that makes its input."""
    with pytest.raises(StageError, match='python -m training scene'):
        upstream_manifests(STAGES['objects'], tmp_path)
    manifest = {'format': MANIFEST_FORMAT, 'stage': 'scene', 'config_hash': 'abc'}
    write_json_atomic(tmp_path / 'scene' / 'manifest.json', manifest)
    assert upstream_manifests(STAGES['objects'], tmp_path) == {'scene': manifest}
    with pytest.raises(StageError, match='python -m training objects'):
        upstream_manifests(STAGES['dsa'], tmp_path)
    assert upstream_manifests(STAGES['scene'], tmp_path) == {}


def test_an_unfinished_upstream_stage_without_its_manifest_does_not_count(tmp_path):
    """A stage dir with checkpoints but no (or a torn) manifest has not finished."""
    (tmp_path / 'scene' / 'checkpoints').mkdir(parents=True)
    (tmp_path / 'scene' / 'checkpoints' / 'last.pt').write_bytes(b'x')
    with pytest.raises(StageError):
        upstream_manifests(STAGES['objects'], tmp_path)
    (tmp_path / 'scene' / 'manifest.json').write_text('{"format": 1, "config_')
    with pytest.raises(StageError):
        upstream_manifests(STAGES['objects'], tmp_path)


def test_stage_status_reports_the_missing_upstream_stage(tmp_path):
    problems = stage_status('objects', cfg(f'data.root={tmp_path / "data"}'), tmp_path / 'run')
    assert len(problems) == 1 and 'python -m training scene' in problems[0]
    assert not (tmp_path / 'data').exists()     # answered without generating data


def test_registry_names_and_unknown_stages():
    assert list(STAGES) == ['scene', 'ground', 'seeds', 'instances', 'objects', 'dsa', 'final', 'distill']
    for name, spec in STAGES.items():
        mod = spec.load()
        assert mod.NAME == name and tuple(mod.REQUIRES) == spec.requires
        assert all(list(STAGES).index(r) < list(STAGES).index(name)
                   for r in spec.requires + spec.requires_learned)   # run order
    assert PLANNED_STAGES == ()
    with pytest.raises(KeyError, match='unknown stage'):
        get_stage('scenery')


def test_cli_has_a_subcommand_per_registered_stage_and_run():
    ap = build_parser()
    for name in STAGES:
        args = ap.parse_args([name, '--preset', 'ci-tiny', '--run-dir', 'x', '--restart'])
        assert args.command == name and args.restart and str(args.run_dir) == 'x'
    args = ap.parse_args(['run', '--preset', 'ci-tiny', '--until', 'objects', '--restart-from', 'dsa'])
    assert args.command == 'run' and args.until == 'objects' and args.restart_from == 'dsa'
    for bad in (['finale', '--preset', 'ci-tiny'], ['run', '--preset', 'ci-tiny', '--until', 'finale']):
        with pytest.raises(SystemExit):
            ap.parse_args(bad)


def test_cli_stage_without_its_upstream_exits_2_naming_the_stage(tmp_path):
    """`python -m training objects` in an empty run dir: exit code 2, one error line naming the scene stage,
    and nothing done (no data generated, no stage dir)."""
    run_dir, data = tmp_path / 'run', tmp_path / 'data'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, '-m', 'training', 'objects', '--preset', 'ci-tiny', '--run-dir',
                           str(run_dir), '--set', f'data.root={data}'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if 'error' in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith('python -m training objects: error:')
    assert "stage 'scene'" in errors[0] and 'python -m training scene' in errors[0]
    assert 'Traceback' not in proc.stderr
    assert not data.exists() and not (run_dir / 'objects').exists()


def test_a_second_process_on_a_run_dir_in_use_exits_at_once_naming_the_holder(tmp_path):
    """While one process trains in a run dir, `python -m training scene` there exits 2 with one error line
    naming the run dir and the holder's pid, before touching the data; once the holder is killed (-9, no
    clean-up) the run dir is free again, and taking it twice in one process (the pipeline) is fine."""
    run_dir, data = tmp_path / 'run', tmp_path / 'data'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    holder = subprocess.Popen([sys.executable, '-c', 'import sys, time; from training.stages.runner import '
                               'lock_run_dir; lock_run_dir(sys.argv[1]); print("locked", flush=True); time.sleep(120)',
                               str(run_dir)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        proc = subprocess.run([sys.executable, '-m', 'training', 'scene', '--preset', 'ci-tiny', '--run-dir',
                               str(run_dir), '--set', f'data.root={data}'], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines() == [
            f'python -m training scene: error: {run_dir} is in use by another training process (pid {holder.pid}); '
            f'wait for it to finish or stop it, or use another --run-dir']
        assert not data.exists() and not (run_dir / 'scene').exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    lock_run_dir(run_dir)
    lock_run_dir(tmp_path / '.' / 'run')        # re-entrant: the same process may take it again
    with pytest.raises(StageError, match="stage 'scene'"):   # run_stage under the pipeline's lock goes on
        run_stage('objects', cfg(f'data.root={data}'), run_dir)
