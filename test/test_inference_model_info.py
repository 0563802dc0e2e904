"""`dynadepth-model-info`: prints and validates metadata; exit 2 with a clear message when invalid."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from contract_model import make_contract_model
from dynadepth_ros.model_format import ModelFormatError, ModelMetadata, read_metadata
from dynadepth_ros.model_info import main


def test_valid_model_prints_its_metadata(tmp_path, capsys):
    m = make_contract_model(tmp_path / 'm.onnx', max_depth=80.0, dataset='kitti-like')
    assert main([str(m), '--run']) == 0
    out = capsys.readouterr().out
    assert 'valid dynadepth model' in out and '192x64' in out and 'metric, metres, range 0.1..80' in out
    assert 'kitti-like' in out and 'probe run' in out and 'non-finite pixels 0' in out
    assert main([str(m), '--json']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['metadata']['input_width'] == 192 and info['inputs']['image'] == ['N', 3, 64, 192]


def test_invalid_models_exit_2_with_the_reason(tmp_path, capsys):
    bare = make_contract_model(tmp_path / 'bare.onnx', with_metadata=False)
    assert main([str(bare)]) == 2
    assert 'missing dynadepth metadata' in capsys.readouterr().err
    bad = make_contract_model(tmp_path / 'bad.onnx', extra_props={'dynadepth.metric': 'yes',
                                                                  'dynadepth.min_depth': '5', 'dynadepth.max_depth': '1'})
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert 'dynadepth.metric must be "true" or "false"' in err and '0 < min < max' in err
    liar = make_contract_model(tmp_path / 'liar.onnx', extra_props={'dynadepth.input_width': '640'})
    assert main([str(liar)]) == 2 and 'the metadata says [N, 3, 64, 640]' in capsys.readouterr().err
    assert main([str(tmp_path / 'missing.onnx')]) == 2 and 'does not exist' in capsys.readouterr().err


def test_set_adds_metadata_after_validation_only(tmp_path, capsys):
    bare = make_contract_model(tmp_path / 'bare.onnx', with_metadata=False)
    keys = ['format=1', 'input_height=64', 'input_width=192', 'min_depth=0.1', 'max_depth=80', 'metric=true',
            'intrinsics=0.58,1.92,0.5,0.5', 'stage=final', 'dataset=own', 'config_hash=abc', 'version=1.0']
    before = bare.read_bytes()
    assert main([str(bare), '--set', 'input_height=32'] + sum([['--set', k] for k in keys[2:]], [])) == 2
    assert bare.read_bytes() == before, 'an invalid --set must not modify the file'
    capsys.readouterr()
    assert main([str(bare)] + sum([['--set', k] for k in keys], [])) == 0
    assert read_metadata(bare).max_depth == 80.0 and read_metadata(bare).dataset == 'own'


def test_console_script_exit_status(tmp_path):
    exe = Path(sys.prefix) / 'bin' / 'dynadepth-model-info'
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', 'dynadepth_ros.model_info']
    bare = make_contract_model(tmp_path / 'bare.onnx', with_metadata=False)
    r = subprocess.run(cmd + [str(bare)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and 'INVALID' in r.stderr


@pytest.mark.parametrize('key,value', [
    ('intrinsics', 'nan,1.92,0.5,0.5'), ('intrinsics', '0.58,inf,0.5,0.5'), ('intrinsics', '0.58,1.92,nan,0.5'),
    ('intrinsics', '0.58,1.92,0.5,-3'), ('intrinsics', '-0.58,1.92,0.5,0.5'), ('min_depth', 'nan'),
    ('max_depth', 'inf'), ('max_depth', 'nan'), ('min_depth', '-1'),
])
def test_non_finite_or_impossible_metadata_is_refused_naming_the_key(tmp_path, capsys, key, value):
    m = make_contract_model(tmp_path / 'm.onnx', extra_props={f'dynadepth.{key}': value})
    assert main([str(m)]) == 2, f'dynadepth.{key}={value} accepted'
    err = capsys.readouterr().err
    assert f'dynadepth.{key}' in err and 'INVALID' in err, err


def test_metadata_validation_names_every_bad_key():
    good = ModelMetadata(64, 192, 0.1, 80.0, True, (0.58, 1.92, 0.5, 0.5), 'final', 'd', 'h', 'v').to_props()
    assert ModelMetadata.from_props(good).max_depth == 80.0
    bad = dict(good, **{'dynadepth.min_depth': 'nan', 'dynadepth.intrinsics': f'0.58,{math.nan},0.5,0.5',
                        'dynadepth.input_width': '100000'})
    with pytest.raises(ModelFormatError) as exc:
        ModelMetadata.from_props(bad)
    for key in ('dynadepth.min_depth', 'dynadepth.intrinsics', 'fy/H', 'dynadepth.input_width'):
        assert key in str(exc.value), str(exc.value)
