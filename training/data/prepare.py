"""Make the configured data exist on disk, once: generate synthetic splits, import rosbag recordings.

`prepare_data(cfg)` is idempotent and cheap when the data are there. Synthetic splits carry a
marker `<root>/<split>/.dynadepth_synth.json` with the generation parameters; it is written
with `"complete": false` before generating and rewritten `"complete": true` after, so a killed
generation is redone and data generated with other parameters are never silently reused (the
call fails and says what to do). A split folder without a marker is data someone made
themselves (e.g. with `dynadepth-synth`): it is used as is. A file lock serialises concurrent
callers (several torchrun ranks).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path

from dynadepth_ros.datasets.base import DatasetError
from training.data.config import DataConfig

log = logging.getLogger(__name__)

MARKER = '.dynadepth_synth.json'


@contextlib.contextmanager
def _locked(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / '.prepare.lock', 'w') as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def synthetic_params(cfg: DataConfig, split: str) -> dict:
    """The generation parameters recorded in a split's marker (everything that changes its content)."""
    s = cfg.synthetic
    return {'split': split, 'sequences': int(s.sequences.get(split, 0)), 'frames': s.frames,
            'height': s.gen_height, 'width': s.gen_width, 'seed': s.seed, 'noise': s.noise,
            'lead_car_fraction': s.lead_car_fraction}


def _complete_sequences(split_dir: Path) -> list[Path]:
    if not split_dir.is_dir():
        return []
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith('.')
                  and (p / 'calib.json').is_file() and (p / 'poses.txt').is_file())


def _prepare_synthetic_split(cfg: DataConfig, root: Path, split: str) -> None:
    params = synthetic_params(cfg, split)
    split_dir = root / split
    marker = split_dir / MARKER
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        complete = recorded.pop('complete', False)
        if recorded != params:
            raise DatasetError(f'{split_dir} holds synthetic data generated with other parameters ({recorded}); '
                               f'this config asks for {params}. Set data.root to another folder or delete '
                               f'{split_dir} to regenerate it')
        if complete and len(_complete_sequences(split_dir)) == params['sequences']:
            return
    elif _complete_sequences(split_dir):
        log.warning('%s holds sequences this pipeline did not generate (no %s); using them as they are',
                    split_dir, MARKER)
        return
    from dynadepth_ros.synth import generate_split  # imported here: only needed when generating

    split_dir.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(marker, {**params, 'complete': False})
    log.info('generating synthetic %s split: %d sequences x %d frames at %dx%d into %s', split,
             params['sequences'], params['frames'], params['width'], params['height'], root)
    extra = {k: params[k] for k in ('noise', 'lead_car_fraction') if params[k] is not None}
    generate_split(root, split, params['sequences'], params['frames'], params['height'], params['width'],
                   params['seed'], bag=False, **extra)
    found = len(_complete_sequences(split_dir))
    if found != params['sequences']:
        raise DatasetError(f'synthetic generation of {split_dir} produced {found} sequences, expected '
                           f'{params["sequences"]}; delete the folder and run again')
    _write_json_atomic(marker, {**params, 'complete': True})


def prepare_data(cfg: DataConfig) -> Path:
    """Ensure cfg's data exist under cfg.root (generate / import on first use); return the root."""
    root = Path(cfg.root)
    if cfg.source == 'synthetic':
        with _locked(root):
            for split, n in cfg.synthetic.sequences.items():
                if n > 0:
                    _prepare_synthetic_split(cfg, root, split)
    elif cfg.source == 'rosbag':
        from training.data.rosbag_import import import_bags

        rb = cfg.rosbag
        if not any(rb.bags.values()):
            raise DatasetError('data.source is rosbag but data.rosbag.bags lists no recordings; add e.g. '
                               'rosbag: {bags: {train: [path/to/bag]}}')
        with _locked(root):
            for split, bags in rb.bags.items():
                if bags:
                    import_bags([Path(b) for b in bags], root, rb.image_topic, rb.camera_info_topic,
                                mask_topic=rb.mask_topic, odom_topic=rb.odom_topic, every_nth=rb.every_nth,
                                depth_topic=rb.depth_topic, split=split)
    elif not root.is_dir():
        raise DatasetError(f'data.root {root} does not exist; {cfg.source} data cannot be downloaded here, '
                           f'point data.root at your copy')
    return root
