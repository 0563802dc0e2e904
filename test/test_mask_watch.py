"""MaskWatch (plain Python): masks that never pair are noticed after its timeout, with the likely cause, and the
warning ends when masks pair again. The node-level behaviour over DDS is in test_node_outputs.py."""
from dynadepth_ros.mask_sync import NO_MASKS, UNPAIRED, MaskWatch


def feed(w, now, **kw):
    base = dict(publishers=1, masks_received=0, frames_out=0, paired=0, unpaired=0, slop_s=0.05, max_wait_s=1.0)
    base.update(kw)
    return w.update(now, **base)


def test_no_mask_from_existing_publishers_while_depth_flows_is_reported_after_the_timeout():
    w = MaskWatch(timeout_s=3.0)
    for t in range(3):
        assert feed(w, float(t), frames_out=t + 1) is None
    kind, text = feed(w, 3.0, frames_out=4)
    assert kind == NO_MASKS and 'DDS transport' in text and 'QoS' in text and 'profile' in text
    assert feed(w, 4.0, frames_out=5, masks_received=1) is None           # a mask arrived


def test_no_publishers_or_no_depth_means_nothing_is_expected():
    w = MaskWatch(timeout_s=1.0)
    for t in range(5):
        assert feed(w, float(t), publishers=0, frames_out=t) is None
    w = MaskWatch(timeout_s=1.0)
    for t in range(5):
        assert feed(w, float(t), frames_out=0) is None                     # no depth produced: images not arriving


def test_masks_that_arrive_but_never_pair_are_reported_with_the_stamp_offset_and_clear_on_a_pairing():
    w = MaskWatch(timeout_s=2.0)
    for t in range(2):
        assert feed(w, float(t), masks_received=t + 1, frames_out=t + 1, unpaired=t) is None
    kind, text = feed(w, 2.0, masks_received=3, frames_out=3, unpaired=2, last_offset_ns=500_000_000)
    assert kind == UNPAIRED and 'stamps not matching' in text and '+0.500 s' in text and 'mask_slop 0.05' in text
    assert feed(w, 3.0, masks_received=4, frames_out=4, unpaired=2, paired=1) is None


def test_one_unpaired_frame_among_pairs_is_not_a_problem():
    w = MaskWatch(timeout_s=1.0)
    for t in range(6):
        assert feed(w, float(t), masks_received=t + 1, frames_out=t + 1, paired=t, unpaired=1) is None
