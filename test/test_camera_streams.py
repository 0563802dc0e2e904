"""camera_streams: per-camera latest-frame slots and the worker's batch schedule (no ROS)."""
import pytest

from dynadepth_ros.camera_streams import CameraStream, take_batch, validate_camera_names


def test_camera_topics_are_prefixed_and_the_single_camera_keeps_todays_names():
    assert CameraStream('front').topic('image') == 'front/image'
    assert CameraStream('rig/left').topic('depth/camera_info') == 'rig/left/depth/camera_info'
    assert CameraStream().topic('image') == 'image'


@pytest.mark.parametrize('names, error', [
    (['front', 'front'], 'listed twice'), ([''], 'not a relative ROS namespace'),
    (['/front'], 'not a relative ROS namespace'), (['1cam'], 'not a relative ROS namespace'),
    (['front cam'], 'not a relative ROS namespace')])
def test_invalid_camera_names_are_refused(names, error):
    with pytest.raises(ValueError, match=error):
        validate_camera_names(names)


def test_valid_camera_names():
    assert validate_camera_names(['front', 'rig/left_2']) == ['front', 'rig/left_2']
    assert validate_camera_names([]) == []


def test_latest_frame_wins_per_camera_and_drops_are_counted_per_camera():
    a, b = CameraStream('a'), CameraStream('b')
    assert not a.store_frame('raw', 1)
    assert a.store_frame('raw', 2)                 # replaced before the worker took it
    assert not b.store_frame('raw', 10)
    taken, _ = take_batch([a, b], 2)
    assert [(s.name, m) for s, _, m in taken] == [('a', 2), ('b', 10)]
    assert a.stats['dropped'] == 1 and b.stats['dropped'] == 0
    assert a.slot is None and b.slot is None


def test_a_fast_camera_never_delays_a_slow_one():
    """Camera 'fast' has a new frame before every batch; 'slow' one now and then: every slow frame goes into the
    very next batch, none is dropped."""
    fast, slow = CameraStream('fast'), CameraStream('slow')
    start = 0
    for i in range(100):
        fast.store_frame('raw', ('f', i))
        fast.store_frame('raw', ('f', i, 'newer'))
        if i % 7 == 0:
            slow.store_frame('raw', ('s', i))
        taken, start = take_batch([fast, slow], 2, start)
        names = [s.name for s, _, _ in taken]
        assert sorted(names) == (['fast', 'slow'] if i % 7 == 0 else ['fast'])
    assert slow.stats['dropped'] == 0 and fast.stats['dropped'] == 100


def test_a_capped_batch_serves_cameras_round_robin():
    cams = [CameraStream(n) for n in ('a', 'b', 'c')]
    start, order = 0, []
    for _ in range(6):
        for c in cams:                     # every camera always has a frame waiting
            c.store_frame('raw', c.name)
        taken, start = take_batch(cams, 2, start)
        order.append(''.join(s.name for s, _, _ in taken))
    assert order == ['ab', 'ca', 'bc', 'ab', 'ca', 'bc']
    counts = {c.name: sum(o.count(c.name) for o in order) for c in cams}
    assert counts == {'a': 4, 'b': 4, 'c': 4}


def test_nothing_pending_gives_an_empty_batch():
    assert take_batch([CameraStream('a')], 4, 3)[0] == []
    assert take_batch([], 4) == ([], 0)
