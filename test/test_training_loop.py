"""The shared training loop: phases train only their sub-modules, the learning-rate schedule, exact
resume after a crash, config-hash protection, the CSV log; and, through the real command line,
resume after `kill -9` and two-process DistributedDataParallel on CPU (gloo)."""
from __future__ import annotations

import builtins
import csv
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from dynadepth_ros.atomic_files import DiskFullError
from training import checkpoint as ckpt_io
from training.checkpoint import CheckpointError
from training.loop import LoopConfig
from training.loop import Phase, param_digest, train

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


class Regression(Dataset):
    """y = x @ W_true + noise; one sample per index, deterministic."""

    def __init__(self, n=48):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 6, generator=g)
        self.y = self.x @ torch.randn(6, 2, generator=g) + 0.05 * torch.randn(n, 2, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {'x': self.x[i], 'y': self.y[i], 'index': i}


class TwoPart(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2))   # dropout: RNG matters
        self.second = nn.Linear(16, 2)


class Crash(RuntimeError):
    pass


def make_loss(crash_at: int | None = None, seen: list | None = None):
    calls = {'n': 0}

    def loss_fn(model, batch, phase):
        calls['n'] += 1
        if seen is not None:
            seen.append((phase, batch['index'].tolist()))
        if crash_at is not None and calls['n'] == crash_at:
            raise Crash('simulated crash')
        pred = model.second(model.first(batch['x']))
        loss = ((pred - batch['y']) ** 2).mean()
        return loss, {'mse': float(loss.detach())}, {'pred_map': pred.detach()[None, None]}
    return loss_fn


PHASES = [Phase('warm', 7, ('first',), 1e-2), Phase('head', 5, ('second',), 1e-2),
          Phase('all', 9, ('first', 'second'), 1e-2, lr_decay_at=(4,), lr_decay=0.1)]
CFG = LoopConfig(batch_size=4, checkpoint_every=3, log_every=2, preview_every=0, val_every=0, seed=3)


def fresh_model():
    ckpt_io.seed_everything(CFG.seed)
    return TwoPart()


def test_phases_step_only_their_submodules(tmp_path):
    model = fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, make_loss(), Regression(), [Phase('warm', 4, ('first',), 1e-2)], CFG, tmp_path,
          config_hash='h', progress=False)
    after = model.state_dict()
    assert not torch.equal(before['first.0.weight'], after['first.0.weight'])
    assert torch.equal(before['second.weight'], after['second.weight'])
    assert torch.equal(before['second.bias'], after['second.bias'])


def test_training_flushes_denormal_floats_that_would_slow_the_cpu_twofold(tmp_path):
    torch.set_flush_denormal(False)
    tiny = torch.full((4,), 1e-39)            # a float32 denormal, made while they are still kept
    seen = []

    def loss_fn(model, batch, phase):
        seen.append(float((tiny * 0.5).sum()))
        return make_loss()(model, batch, phase)

    train(fresh_model(), loss_fn, Regression(), [Phase('warm', 2, ('first',), 1e-2)], CFG, tmp_path,
          config_hash='h', progress=False)
    assert seen and all(v == 0.0 for v in seen)


def test_a_row_check_that_raises_stops_training_at_that_row(tmp_path):
    rows = []

    def check(row):
        rows.append(row['step'])
        if row['step'] >= 4:
            raise Crash('stop here')

    with pytest.raises(Crash, match='stop here'):
        train(fresh_model(), make_loss(), Regression(), PHASES, CFG, tmp_path, config_hash='h', progress=False,
              check_row=check)
    assert rows == [2, 4]                               # log_every 2: it saw every train row up to the stop
    saved = ckpt_io.load(tmp_path / 'checkpoints' / 'last.pt', map_location='cpu')
    assert saved['state']['global_step'] == 3           # the checkpoint before the stop is kept as it was


def test_lr_schedule_within_phase():
    p = Phase('all', 100, ('a',), 2e-4, lr_decay_at=(10, 50), lr_decay=0.5)
    assert p.lr_at(0) == pytest.approx(2e-4)
    assert p.lr_at(9) == pytest.approx(2e-4)
    assert p.lr_at(10) == pytest.approx(1e-4)
    assert p.lr_at(50) == pytest.approx(5e-5)


def test_resume_after_crash_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    total = sum(p.steps for p in PHASES)
    ref_model = fresh_model()
    ref = train(ref_model, make_loss(), Regression(), PHASES, CFG, tmp_path / 'ref', config_hash='h', progress=False)
    assert ref.global_step == total and ref.resumed_from is None

    # Crash in the middle of phase 'head' (call 10): the last checkpoint is at step 9.
    model = fresh_model()
    with pytest.raises(Crash):
        train(model, make_loss(crash_at=10), Regression(), PHASES, CFG, tmp_path / 'run', config_hash='h',
              progress=False)
    saved = ckpt_io.load(tmp_path / 'run' / 'checkpoints' / 'last.pt')
    assert saved['state']['global_step'] == 9 and saved['state']['phase_index'] == 1

    seen = []
    model = fresh_model()   # a new process would build the model from scratch too
    res = train(model, make_loss(seen=seen), Regression(), PHASES, CFG, tmp_path / 'run', config_hash='h',
                progress=False)
    assert res.resumed_from == 9 and res.trained_steps == total - 9 and res.global_step == total
    assert seen[0][0] == 'head'
    assert param_digest(model) == param_digest(ref_model)

    # The log has each training step row once, in order, up to the end.
    with (tmp_path / 'run' / 'metrics.csv').open() as f:
        steps = [int(r['step']) for r in csv.DictReader(f) if r['split'] == 'train']
    with (tmp_path / 'ref' / 'metrics.csv').open() as f:
        ref_steps = [int(r['step']) for r in csv.DictReader(f) if r['split'] == 'train']
    assert steps == ref_steps and steps[-1] == total

    # Running again is a no-op: the checkpoint says the schedule is finished.
    again = train(fresh_model(), make_loss(crash_at=1), Regression(), PHASES, CFG, tmp_path / 'run',
                  config_hash='h', progress=False)
    assert again.trained_steps == 0 and again.global_step == total


def _train_steps(run_dir: Path) -> list[int]:
    with (run_dir / 'metrics.csv').open() as f:
        return [int(r['step']) for r in csv.DictReader(f) if r['split'] == 'train']


def test_rerun_after_a_kill_before_the_first_checkpoint_starts_the_log_over(tmp_path):
    """A run that dies after logging step 2 but before its first checkpoint (step 3) leaves a metrics.csv;
    the rerun starts from scratch, so the log must too: one history, not 2, 2, 4, 6, 7."""
    phases = PHASES[:1]
    train(fresh_model(), make_loss(), Regression(), phases, CFG, tmp_path / 'ref', config_hash='h', progress=False)
    with pytest.raises(Crash):
        train(fresh_model(), make_loss(crash_at=3), Regression(), phases, CFG, tmp_path / 'run', config_hash='h',
              progress=False)
    assert not (tmp_path / 'run' / 'checkpoints' / 'last.pt').exists() and _train_steps(tmp_path / 'run') == [2]
    res = train(fresh_model(), make_loss(), Regression(), phases, CFG, tmp_path / 'run', config_hash='h',
                progress=False)
    assert res.resumed_from is None
    assert _train_steps(tmp_path / 'run') == _train_steps(tmp_path / 'ref') == [2, 4, 6, 7]


class _FillingFile:
    """A file on a disk with `room` bytes left: writes past that raise OSError(ENOSPC), as a full disk does."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, data) -> int:
        n = len(memoryview(data).cast('B'))
        if n > self._room:
            self._f.write(bytes(memoryview(data).cast('B')[:self._room]))
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= n
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def fill_disk_at(monkeypatch, name: str, after: int, room: int = 4096) -> None:
    """The disk fills up while the (after+1)-th atomic write of a file called `name` is under way (the
    temporary file atomic_path hands out, `.<name>.<unique>.tmp<suffix>`, opened for writing)."""
    real_open, seen = builtins.open, []

    def fake_open(file, mode='r', *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and set(mode) & set('wxa') and \
                os.path.basename(os.fspath(file)).startswith(f'.{name}.'):
            seen.append(file)
            if len(seen) > after:
                return _FillingFile(f, room)
        return f
    monkeypatch.setattr(builtins, 'open', fake_open)


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The disk fills up during the second checkpoint (step 6): a DiskFullError naming last.pt, no temp file
    left, the step-3 checkpoint intact; the rerun resumes from it and finishes."""
    phases = PHASES[:1]
    ckpt = tmp_path / 'checkpoints' / 'last.pt'
    fill_disk_at(monkeypatch, 'last.pt', after=1)
    with pytest.raises(DiskFullError) as err:
        train(fresh_model(), make_loss(), Regression(), phases, CFG, tmp_path, config_hash='h', progress=False)
    assert str(err.value) == f'disk full while writing {ckpt}'
    assert os.listdir(ckpt.parent) == ['last.pt']
    assert ckpt_io.load(ckpt)['state']['global_step'] == 3
    monkeypatch.undo()
    res = train(fresh_model(), make_loss(), Regression(), phases, CFG, tmp_path, config_hash='h', progress=False)
    assert res.resumed_from == 3 and res.global_step == 7
    assert _train_steps(tmp_path) == [2, 4, 6, 7]


def test_checkpoint_of_another_config_is_refused(tmp_path):
    train(fresh_model(), make_loss(), Regression(), PHASES[:1], CFG, tmp_path, config_hash='one', progress=False)
    with pytest.raises(CheckpointError, match='config'):
        train(fresh_model(), make_loss(), Regression(), PHASES[:1], CFG, tmp_path, config_hash='two',
              progress=False)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    def nan_loss(model, batch, phase):
        out = model.second(model.first(batch['x'])).sum() * float('nan')
        return out, {}, {}
    with pytest.raises(FloatingPointError, match='loss is nan'):
        train(fresh_model(), nan_loss, Regression(), PHASES[:1], CFG, tmp_path, config_hash='h', progress=False)


def test_too_small_dataset_is_reported(tmp_path):
    with pytest.raises(ValueError, match='fewer than one batch'):
        train(fresh_model(), make_loss(), Regression(n=3), PHASES[:1], CFG, tmp_path, config_hash='h',
              progress=False)


def test_previews_and_metrics_plot_are_written(tmp_path):
    cfg = LoopConfig(batch_size=4, checkpoint_every=50, log_every=1, preview_every=2, val_every=0, seed=0)
    train(fresh_model(), make_loss(), Regression(), [Phase('warm', 4, ('first',), 1e-2)], cfg, tmp_path,
          config_hash='h', progress=False)
    assert sorted(p.name for p in (tmp_path / 'previews').glob('*.png')) == ['step_000002.png', 'step_000004.png']
    assert (tmp_path / 'metrics.png').stat().st_size > 1000


# ------------------------------------------------------------------ the command line, for real


def _scene_cmd(run_dir: Path, data_root: Path, *extra: str) -> list[str]:
    return [PY, '-m', 'training', 'scene', '--preset', 'ci-tiny', '--run-dir', str(run_dir),
            '--set', f'data.root={data_root}', '--set', 'runtime.progress=false', *extra]


def _env():
    env = dict(os.environ)
    env['PYTHONUNBUFFERED'] = '1'
    env['OMP_NUM_THREADS'] = '1'
    return env


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    """ci-tiny data generated once for this module through the real command."""
    root = tmp_path_factory.mktemp('ci_tiny_data')
    subprocess.run([PY, '-m', 'training', 'prepare-data', '--preset', 'ci-tiny', '--set', f'data.root={root}'],
                   cwd=REPO, env=_env(), check=True, timeout=120)
    return root


def test_kill_9_then_rerun_resumes_from_the_last_checkpoint(tmp_path, data_root):
    run = tmp_path / 'run'
    short = ['--set', 'scene.loop.checkpoint_every=4', '--set', 'scene.phases.0.steps=6',
             '--set', 'scene.phases.1.steps=4', '--set', 'scene.phases.2.steps=14', '--set', 'runtime.threads=1',
             '--set', 'scene.loop.val_every=0', '--set', 'scene.loop.preview_every=0']
    ckpt = run / 'scene' / 'checkpoints' / 'last.pt'
    proc = subprocess.Popen(_scene_cmd(run, data_root, *short), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while not ckpt.exists():
            assert proc.poll() is None, f'training ended before its first checkpoint:\n{proc.stdout.read()}'
            assert time.monotonic() < deadline, 'no checkpoint appeared'
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = ckpt_io.load(ckpt)['state']['global_step']
    assert 4 <= killed_at < 24
    assert not (run / 'scene' / 'manifest.json').exists()

    out = subprocess.run(_scene_cmd(run, data_root, *short), cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f'resuming from step {killed_at}/24' in out.stdout
    final = ckpt_io.load(ckpt)
    assert final['finished'] and final['state']['global_step'] == 24
    assert (run / 'scene' / 'manifest.json').is_file()
    with (run / 'scene' / 'metrics.csv').open() as f:
        steps = [int(r['step']) for r in csv.DictReader(f) if r['split'] == 'train']
    assert steps == sorted(set(steps)) and steps[-1] == 24


def test_cli_reports_a_full_disk_in_one_line_and_keeps_the_last_checkpoint(tmp_path, data_root, monkeypatch,
                                                                          capsys):
    """`python -m training scene` when the disk fills up during the second checkpoint: exit code 1, one error
    line naming the checkpoint and what to do (no torch traceback), the step-2 checkpoint intact."""
    from training.__main__ import main

    run = tmp_path / 'run'
    ckpt = run / 'scene' / 'checkpoints' / 'last.pt'
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    fill_disk_at(monkeypatch, 'last.pt', after=1)
    code = main(_scene_cmd(run, data_root, '--set', 'scene.loop.checkpoint_every=2', '--set', 'runtime.threads=1',
                           '--set', 'scene.phases.0.steps=2', '--set', 'scene.phases.1.steps=1',
                           '--set', 'scene.phases.2.steps=2', '--set', 'scene.loop.val_every=0',
                           '--set', 'scene.loop.preview_every=0')[3:])
    err = capsys.readouterr().err
    assert code == 1, err
    assert [line for line in err.splitlines() if 'error' in line.lower()] == [
        f'python -m training scene: error: disk full while writing {ckpt}; free space and rerun (it resumes '
        f'from the last checkpoint)']
    assert 'Traceback' not in err
    assert os.listdir(ckpt.parent) == ['last.pt'] and ckpt_io.load(ckpt)['state']['global_step'] == 2


def test_two_process_ddp_on_cpu_keeps_ranks_identical(tmp_path, data_root):
    run = tmp_path / 'ddp'
    cmd = [PY, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           '-m', 'training', 'scene', '--preset', 'ci-tiny', '--run-dir', str(run),
           '--set', f'data.root={data_root}', '--set', 'runtime.progress=false', '--set', 'runtime.threads=1',
           '--set', 'runtime.debug_param_digest=true', '--set', 'scene.phases.0.steps=3',
           '--set', 'scene.phases.1.steps=2', '--set', 'scene.phases.2.steps=3', '--set', 'scene.loop.val_every=0',
           '--set', 'scene.loop.preview_every=0', '--set', 'scene.loop.checkpoint_every=100']
    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    d0 = (run / 'scene' / 'debug' / 'param_digest.rank0.txt').read_text().strip()
    d1 = (run / 'scene' / 'debug' / 'param_digest.rank1.txt').read_text().strip()
    assert d0 == d1
    # and they are the weights rank 0 saved
    from training.stages.scene import build_model
    from training.config import load_config
    cfg = load_config(config_file=run / 'scene' / 'config.yaml')
    model = build_model(cfg)
    model.load_state_dict(ckpt_io.load(run / 'scene' / 'checkpoints' / 'last.pt')['model'])
    assert param_digest(model) == d0
    # the initial weights moved (it trained) and only rank 0 wrote the log
    assert ckpt_io.load(run / 'scene' / 'checkpoints' / 'last.pt')['world_size'] == 2
    assert (run / 'scene' / 'metrics.csv').is_file()


# ------------------------------------------------------------------ configuration


def test_every_preset_loads_and_names_phases_the_model_knows():
    from training.config import load_config, preset_names
    from training.stages.scene_model import SceneModel

    assert {'ci-tiny', 'cpu-small', 'cityscapes', 'kitti'} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name)
        assert cfg.name == name and cfg.scene.phases
        for p in cfg.scene.phases:
            assert SceneModel.trainable(p.name)
        assert cfg.data.height % 32 == 0 and cfg.data.width % 32 == 0


def test_overrides_are_typed_and_checked():
    from training.config import ConfigError, load_config

    cfg = load_config('ci-tiny', overrides=['scene.loop.batch_size=4', 'scene.phases.1.steps=7',
                                            'scene.phases.0.lr=1e-4', 'data.synthetic.sequences.train=5',
                                            'scene.predict_splits=[val]'])
    assert cfg.scene.loop.batch_size == 4 and cfg.scene.phases[1].steps == 7
    assert cfg.scene.phases[0].lr == pytest.approx(1e-4) and isinstance(cfg.scene.phases[0].lr, float)
    assert cfg.data.synthetic.sequences['train'] == 5 and cfg.scene.predict_splits == ['val']
    with pytest.raises(ConfigError, match="no key 'scene.loop.batchsize'.*batch_size"):
        load_config('ci-tiny', overrides=['scene.loop.batchsize=4'])
    with pytest.raises(ConfigError, match='expected an integer'):
        load_config('ci-tiny', overrides=['scene.loop.batch_size=four'])
    with pytest.raises(ConfigError, match='not an index'):
        load_config('ci-tiny', overrides=['scene.phases.9.steps=1'])
    with pytest.raises(ConfigError, match='key.path=value'):
        load_config('ci-tiny', overrides=['scene.loop.batch_size'])
    with pytest.raises(ConfigError, match='unknown preset'):
        load_config('no-such-preset')


def test_config_files_extend_presets_and_round_trip(tmp_path):
    from training.config import ConfigError, dump_yaml, load_config

    f = tmp_path / 'mine.yaml'
    f.write_text('extends: ci-tiny\nname: mine\nscene:\n  loop: {batch_size: 3}\n')
    cfg = load_config(config_file=f)
    assert cfg.name == 'mine' and cfg.scene.loop.batch_size == 3
    assert cfg.data.height == 64 and cfg.scene.phases == load_config('ci-tiny').scene.phases
    (tmp_path / 'dump.yaml').write_text(dump_yaml(cfg))
    assert load_config(config_file=tmp_path / 'dump.yaml') == cfg
    f.write_text('extends: ci-tiny\nscene:\n  lop: {batch_size: 3}\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lop'\]"):
        load_config(config_file=f)
