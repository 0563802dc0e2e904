"""What a stage leaves behind and how the next invocation knows it is still valid.

A stage directory `runs/<name>/<stage>/` ends with a `manifest.json` naming the config hash, the
data fingerprint, the checkpoint and every artifact with its SHA-256. A stage is up to date (and
skipped) when the manifest's config hash and data fingerprint equal the current ones and every
file it lists still exists with the recorded hash.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from pathlib import Path

from dynadepth_ros.atomic_files import file_sha256

MANIFEST_NAME = 'manifest.json'
MANIFEST_FORMAT = 1
# Files whose content (not just size) goes into the data fingerprint: small text/metadata files.
CONTENT_HASH_SUFFIXES = ('.txt', '.json', '.yaml', '.csv')
CONTENT_HASH_MAX_BYTES = 1 << 20


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(',', ':'), default=str)


def hash_object(obj, length: int = 16) -> str:
    """Hex SHA-256 prefix of an object's canonical JSON (key order does not matter)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def data_fingerprint(root: str | os.PathLike) -> dict:
    """Fingerprint of a dataset folder: every file's relative path and size, plus the content of
    the small metadata files (calibration, poses, instance lists, split lists).

    Regenerating identical data keeps the fingerprint; any changed, added or removed frame
    changes it. Hidden entries (partial writes) are ignored. Returns {'hash', 'files', 'bytes'}.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'data root {root} does not exist; generate or import the data first')
    h = hashlib.sha256()
    n_files = n_bytes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
        for name in sorted(filenames):
            if name.startswith('.'):
                continue
            p = Path(dirpath) / name
            size = p.stat().st_size
            rel = p.relative_to(root).as_posix()
            h.update(f'{rel}\0{size}\0'.encode())
            if name.endswith(CONTENT_HASH_SUFFIXES) and size <= CONTENT_HASH_MAX_BYTES:
                h.update(p.read_bytes())
            n_files += 1
            n_bytes += size
    return {'hash': h.hexdigest()[:16], 'files': n_files, 'bytes': n_bytes}


def read_manifest(stage_dir: str | os.PathLike) -> dict | None:
    """The stage's manifest, or None when it has none (or it is unreadable)."""
    path = Path(stage_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return m if isinstance(m, dict) and m.get('format') == MANIFEST_FORMAT else None


def file_entry(stage_dir: str | os.PathLike, path: str | os.PathLike) -> dict:
    """{'path': relative to the stage dir, 'sha256', 'bytes'} of one artifact."""
    stage_dir, path = Path(stage_dir), Path(path)
    return {'path': path.relative_to(stage_dir).as_posix() if path.is_absolute() else path.as_posix(),
            'sha256': file_sha256(path if path.is_absolute() else stage_dir / path),
            'bytes': (path if path.is_absolute() else stage_dir / path).stat().st_size}


def manifest_problems(stage_dir: str | os.PathLike, manifest: dict | None, config_hash: str,
                      fingerprint: dict) -> list[str]:
    """Why the stage is not up to date (empty list: it is). Checks hashes and listed files."""
    if manifest is None:
        return ['no manifest (the stage has not finished yet)']
    problems = []
    if manifest.get('config_hash') != config_hash:
        problems.append(f'config changed (manifest {manifest.get("config_hash")}, now {config_hash})')
    old = (manifest.get('data') or {}).get('fingerprint', {}).get('hash')
    if old != fingerprint.get('hash'):
        problems.append(f'data changed (fingerprint {old} → {fingerprint.get("hash")})')
    for entry in manifest.get('files', {}).values():
        p = Path(stage_dir) / entry['path']
        if not p.is_file():
            problems.append(f'{entry["path"]} is missing')
        elif p.stat().st_size != entry['bytes'] or file_sha256(p) != entry['sha256']:
            problems.append(f'{entry["path"]} differs from the manifest')
    for split, count in (manifest.get('predictions') or {}).get('counts', {}).items():
        d = Path(stage_dir) / manifest['predictions']['root'] / split
        pattern = manifest['predictions'].get('pattern', '*.npz')
        have = sum(1 for _ in d.rglob(pattern)) if d.is_dir() else 0   # sequence names may nest
        if have != count:
            problems.append(f'predictions/{split} has {have} files, manifest says {count}')
    return problems


def environment_versions() -> dict:
    """Versions worth recording next to an artifact."""
    import numpy
    import torch

    import dynadepth_ros

    return {'dynadepth_ros': dynadepth_ros.__version__, 'torch': torch.__version__, 'numpy': numpy.__version__,
            'python': platform.python_version()}


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
