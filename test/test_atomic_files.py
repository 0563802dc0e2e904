"""dynadepth_ros.atomic_files: every write lands whole or not at all, and leaves no temporary file behind."""
import errno
import hashlib
import json
import os

import numpy as np
import pytest

from dynadepth_ros.atomic_files import (DiskFullError, atomic_path, file_sha256, write_bytes_atomic,
                                        write_json_atomic, write_text_atomic)


def test_helpers_write_whole_files_and_create_parents(tmp_path):
    write_bytes_atomic(tmp_path / 'a' / 'b.bin', b'\x00\x01')
    write_text_atomic(tmp_path / 'a' / 'c.txt', 'grüße')
    write_json_atomic(tmp_path / 'a' / 'd.json', {'x': 1, 'p': tmp_path})
    assert (tmp_path / 'a' / 'b.bin').read_bytes() == b'\x00\x01'
    assert (tmp_path / 'a' / 'c.txt').read_text(encoding='utf-8') == 'grüße'
    text = (tmp_path / 'a' / 'd.json').read_text()
    assert text.endswith('}\n') and json.loads(text) == {'x': 1, 'p': str(tmp_path)}   # indent 2, default=str
    assert sorted(p.name for p in (tmp_path / 'a').iterdir()) == ['b.bin', 'c.txt', 'd.json']


def test_atomic_path_keeps_the_suffix_for_writers_and_uses_the_umask(tmp_path):
    target = tmp_path / 'depth.npy'
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith('.depth.npy.') and tmp.suffix == '.npy'
        np.save(tmp, np.arange(3))
        assert not target.exists()
    assert np.load(target).tolist() == [0, 1, 2]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ['depth.npy']


def test_a_failed_or_empty_write_leaves_the_old_file(tmp_path):
    target = tmp_path / 'x.txt'
    target.write_text('old')
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('half')
        raise RuntimeError('writer died')
    with pytest.raises(OSError, match='nothing was written'), atomic_path(target, fsync=True):
        pass
    assert target.read_text() == 'old' and [p.name for p in tmp_path.iterdir()] == ['x.txt']


def test_file_sha256_is_the_content_hash(tmp_path):
    data = os.urandom(3 * 1000 + 7)
    (tmp_path / 'f').write_bytes(data)
    assert file_sha256(tmp_path / 'f', chunk=1000) == hashlib.sha256(data).hexdigest()


def test_a_full_disk_raises_disk_full_error_naming_the_target_and_keeps_the_old_file(tmp_path):
    """ENOSPC while writing — directly, or as the context of another error (torch.save raises RuntimeError
    'unexpected pos ...' after its failed write) — is one DiskFullError naming the target; the temporary file
    is removed and the target keeps its content."""
    target = tmp_path / 'last.pt'
    target.write_text('old')
    with pytest.raises(DiskFullError) as err, atomic_path(target) as tmp, open(tmp, 'xb') as f:
        f.write(b'half')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(err.value) == f'disk full while writing {target}' and err.value.filename == str(target)
    with pytest.raises(DiskFullError, match='disk full while writing .*last.pt$'), atomic_path(target) as tmp:
        tmp.write_text('half')
        try:
            raise OSError(errno.ENOSPC, 'No space left on device')
        except OSError:
            raise RuntimeError('[enforce fail at inline_container.cc] . unexpected pos 64 vs 0')
    assert target.read_text() == 'old' and [p.name for p in tmp_path.iterdir()] == ['last.pt']
    assert DiskFullError.find(RuntimeError('other')) is None
