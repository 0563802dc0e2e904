"""`dynadepth-replay`: publish a rosbag2's messages over ROS 2 with their original timing, and record topics.

    dynadepth-replay BAG [--rate 1.0] [--loop] [--start-offset S] [--topics T ...] [--clock [HZ]]
                     [--record OUT --record-topics /depth ...] [--wait-subscribers /camera/image_raw ...]

Messages are published as the raw CDR bytes stored in the bag (no decoding), each at
start + (receive time in the bag - bag start - offset) / rate on the wall clock. Header stamps are
left as recorded. With --clock, /clock (rosgraph_msgs/Clock, best effort, keep last 1: rclcpp's
ClockQoS, as `ros2 bag play --clock` publishes it) carries the bag time of that same schedule,
bag start + offset + wall time since the pass started x rate, at HZ (default 40) and right before
each message whose receive time the last /clock has not reached, so nodes with use_sim_time:=true
never see a message from their future. Nor does /clock run ahead of the messages: when the replayer
falls behind its schedule (a stalled process), /clock holds at the receive time of the message it is
about to publish, then goes on. Each --loop pass starts again at bag start + offset.
Topics whose message type this rclpy install lacks
(e.g. tf2_msgs/TFMessage from pip) are skipped with one warning per type and counted. Latched
(transient-local) topics such as /tf_static are published with transient-local QoS, and before
the start offset is applied, so late joiners and offset starts still get them.

Recording (--record OUT): each --record-topics topic is subscribed raw as soon as it appears in the
graph (QoS adapted to its publishers) and written with its receive time into a new rosbag2 (mcap
by default) through rosbags; the bag is written as OUT.partial and renamed to OUT when closed,
also after Ctrl-C. The stamp→publish latency of recorded messages whose header stamp equals a
replayed --latency-topic message (e.g. the node's depth for a replayed image) is reported.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import signal
import sys
import time
from collections import OrderedDict
from pathlib import Path

from dynadepth_ros.atomic_files import write_text_atomic
from dynadepth_ros.recording.bag_reader import BagError, BagReader, cdr_header_stamp_ns

TF_STATIC = '/tf_static'
CLOCK_TOPIC = '/clock'
DEFAULT_CLOCK_HZ = 40.0       # ros2 bag play --clock without a value


class ReplayError(RuntimeError):
    """Replay cannot start as asked; the message says what to change."""


class _Stop(Exception):
    """SIGTERM: finish like Ctrl-C (close the recording, print the summary)."""


def due_offset_s(t_ns: int, origin_ns: int, rate: float) -> float:
    """Seconds after the replay start at which a message received at t_ns (bag time) is published."""
    return max(0.0, (t_ns - origin_ns) / 1e9 / rate)


def bag_time_ns(origin_ns: int, elapsed_s: float, rate: float) -> int:
    """Bag time at `elapsed_s` wall seconds after the replay start: the inverse of due_offset_s."""
    return origin_ns + int(round(elapsed_s * rate * 1e9))


def clock_hz(text: str) -> float:
    """argparse type of --clock: a publish rate in Hz, finite and > 0."""
    try:
        hz = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a rate in Hz (write the bag path before --clock, '
                                         f'or give a number: --clock 100)') from None
    if not math.isfinite(hz) or hz <= 0:
        raise argparse.ArgumentTypeError(f'the /clock rate must be a number of Hz > 0, got {text!r}')
    return hz


class ClockPublisher:
    """/clock in bag time on the replayer's schedule (see the module docstring): a tick every 1/hz s of wall time,
    and a message before any replayed message the last tick has not reached."""

    def __init__(self, node, hz: float):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        self._msg = Clock
        # rclcpp::ClockQoS(), what ros2 bag play uses and rclpy/rclcpp TimeSource subscribe with
        self.pub = node.create_publisher(Clock, CLOCK_TOPIC, QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.VOLATILE))
        self.hz, self.period = hz, 1.0 / hz
        self.count = 0
        self.start, self.origin_ns, self.rate = 0.0, 0, 1.0
        self.ticks = 0
        self.last_ns: int | None = None

    def begin(self, start: float, origin_ns: int, rate: float) -> None:
        """A new pass starts at monotonic time `start`: bag time goes (back) to origin_ns and ticks from there."""
        self.start, self.origin_ns, self.rate = start, origin_ns, rate
        self.ticks, self.last_ns = 0, None
        self.tick(start)

    def next_tick(self) -> float:
        """Monotonic time of the next scheduled tick."""
        return self.start + self.ticks * self.period

    def tick(self, now: float, until_ns: int | None = None) -> None:
        """Publish if a tick is due; the next one is the first scheduled after `now` (no burst after a stall).
        until_ns: the receive time of the next message, still unpublished: /clock does not go past it."""
        if now >= self.next_tick():
            self._publish(now, until_ns=until_ns)
            self.ticks = int((now - self.start) / self.period) + 1

    def before_message(self, now: float, t_ns: int) -> None:
        """Called right before a message received at t_ns (bag time) is published."""
        if self.last_ns is None or self.last_ns < t_ns:
            self._publish(now, at_least_ns=t_ns, until_ns=t_ns)      # the message's own receive time

    def _publish(self, now: float, at_least_ns: int = 0, until_ns: int | None = None) -> None:
        t = bag_time_ns(self.origin_ns, now - self.start, self.rate)
        if until_ns is not None:
            t = min(t, until_ns)
        t = max(t, at_least_ns, self.last_ns or 0)
        msg = self._msg()
        msg.clock.sec, msg.clock.nanosec = divmod(t, 1_000_000_000)
        self.pub.publish(msg)
        self.count += 1
        self.last_ns = t


def message_class(msgtype: str):
    """The rclpy message class for 'pkg/msg/Name', or None if this install does not have it."""
    try:
        pkg, kind, name = msgtype.split('/')
        return getattr(importlib.import_module(f'{pkg}.{kind}'), name)
    except (ValueError, ImportError, AttributeError):
        return None


def global_topic(topic: str) -> str:
    """'depth' → '/depth' (replay runs in the root namespace)."""
    return topic if topic.startswith('/') else '/' + topic


def _distribution(values_ms: list[float]) -> dict:
    from dynadepth_ros.recording.eval_report import distribution
    return distribution(values_ms)


class Recorder:
    """Records topics raw into a rosbag2 via rosbags (see the module docstring)."""

    def __init__(self, node, out: str | os.PathLike, topics: list[str], storage: str = 'mcap', log=print,
                 on_message=None, log_time=None):
        """on_message(topic, t_ns, raw) is called after each write; log_time(topic, raw) -> ns or None
        gives the log time of messages this process published itself (None: the receive time)."""
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        self.node = node
        self.out = Path(out)
        if self.out.exists():
            raise ReplayError(f'recording target {self.out} already exists; choose another --record path or delete it')
        self.partial = self.out.with_name(self.out.name + '.partial')
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self.writer = Writer(self.partial, version=9, storage_plugin=plugin)
        self.writer.open()
        self.pending = [global_topic(t) for t in topics]
        self.subs: dict = {}
        self.conns: dict = {}
        self.counts: dict[str, int] = {}
        self.log = log
        self.on_message = on_message
        self.log_time = log_time
        self.closed = False

    def poll(self) -> None:
        """Subscribe to record topics that have appeared in the graph since the last call."""
        if not self.pending:
            return
        known = dict(self.node.get_topic_names_and_types())
        for topic in list(self.pending):
            types = known.get(topic)
            if not types:
                continue
            self.pending.remove(topic)
            msgtype = types[0]
            cls = message_class(msgtype)
            if cls is None or msgtype not in self.typestore.types:
                self.log(f'warning: cannot record {topic}: message type {msgtype} is not available here')
                continue
            self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.typestore)
            self.counts[topic] = 0
            self.subs[topic] = self.node.create_subscription(
                cls, topic, lambda raw, t=topic: self._on_raw(t, raw), self._qos_for(topic), raw=True)

    def _qos_for(self, topic: str):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        infos = self.node.get_publishers_info_by_topic(topic)
        reliable = bool(infos) and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
        latched = bool(infos) and all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                          reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)

    def _on_raw(self, topic: str, raw: bytes) -> None:
        if self.closed:
            return
        # a message this process replayed itself is logged at its publish time: the recorder's callback
        # order across topics is not the arrival order under load, so its receive time could come after
        # the receive time of the depth computed from it (negative latency)
        t = (self.log_time(topic, raw) if self.log_time is not None else None) or time.time_ns()
        self.writer.write(self.conns[topic], t, raw)
        self.counts[topic] += 1
        if self.on_message is not None:
            self.on_message(topic, t, raw)

    def matched(self) -> bool:
        """Every record topic is subscribed and matched to at least one publisher."""
        return not self.pending and all(s.get_publisher_count() > 0 for s in self.subs.values())

    def close(self) -> Path:
        if self.closed:
            return self.out
        self.closed = True
        for s in self.subs.values():
            self.node.destroy_subscription(s)
        self.writer.close()
        os.replace(self.partial, self.out)
        return self.out


class Replayer:
    """Publishes a bag's messages with their original timing (see the module docstring)."""

    def __init__(self, node, bag: BagReader, topics: list[str] | None = None, rate: float = 1.0,
                 start_offset: float = 0.0, latency_topic: str = '/camera/image_raw', log=print,
                 clock_hz: float | None = None):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        if rate <= 0:
            raise ReplayError(f'--rate must be > 0, got {rate}')
        if start_offset < 0:
            raise ReplayError(f'--start-offset must be >= 0 s, got {start_offset}')
        if clock_hz is not None and not (math.isfinite(clock_hz) and clock_hz > 0):
            raise ReplayError(f'--clock must be a rate in Hz > 0, got {clock_hz}')
        self.node, self.bag, self.rate, self.log = node, bag, rate, log
        have = bag.topics
        if topics:
            bag.require(topics)
        selected = list(topics) if topics else list(have)
        latched = bag.transient_local_topics() | ({TF_STATIC} & set(selected))
        self.publishers: dict = {}
        self.skipped_types: dict[str, dict] = {}
        for topic in selected:
            msgtype = have[topic][0]
            cls = message_class(msgtype)
            if cls is None:
                entry = self.skipped_types.setdefault(msgtype, {'topics': [], 'messages': 0})
                entry['topics'].append(topic)
                continue
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if topic in latched
                             else DurabilityPolicy.VOLATILE)
            self.publishers[topic] = node.create_publisher(cls, topic, qos)
        for msgtype, entry in self.skipped_types.items():
            log(f'warning: message type {msgtype} is not available in this ROS install; not replaying '
                f'{", ".join(entry["topics"])} ({sum(have[t][1] for t in entry["topics"])} messages)')
        self.latched = latched & set(self.publishers)
        self.topics = selected
        self.origin_ns = bag.start_ns + int(round(start_offset * 1e9))
        self.published: dict[str, int] = dict.fromkeys(self.publishers, 0)
        self.unacked: list[str] = []          # topics wait_for_acks() gave up on
        self.latency_topic = latency_topic if latency_topic in self.publishers else None
        self.publish_times: OrderedDict[int, int] = OrderedDict()     # stamp ns → wall publish ns
        self.latencies_ms: list[float] = []
        self.loops = 0
        self.clock = ClockPublisher(node, clock_hz) if clock_hz is not None else None

    def wait_for(self, executor, condition, what: str, timeout: float) -> bool:
        """Spin until condition() or timeout; warn on timeout."""
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                self.log(f'warning: {what} not ready after {timeout:g} s; starting anyway')
                return False
            executor.spin_once(timeout_sec=0.05)
        return True

    def _publish(self, topic: str, raw: bytes) -> None:
        self.publishers[topic].publish(raw)
        self.published[topic] += 1
        if topic == self.latency_topic:
            try:
                self.publish_times[cdr_header_stamp_ns(raw)] = time.time_ns()
            except ValueError:
                return
            while len(self.publish_times) > 10000:
                self.publish_times.popitem(last=False)

    def publish_time_ns(self, topic: str, raw: bytes) -> int | None:
        """Wall time (ns) this replayer published the latency-topic message `raw`, else None."""
        if topic != self.latency_topic:
            return None
        try:
            return self.publish_times.get(cdr_header_stamp_ns(raw))
        except ValueError:
            return None

    def note_received(self, topic: str, t_ns: int, raw: bytes) -> None:
        """Recorder hook: latency of a message stamped like a replayed latency-topic message."""
        if topic == self.latency_topic:
            return
        try:
            sent = self.publish_times.get(cdr_header_stamp_ns(raw))
        except ValueError:
            return
        if sent is not None:
            self.latencies_ms.append((t_ns - sent) / 1e6)

    def play_once(self, executor, poll=None) -> None:
        """One pass over the bag: latched messages before the offset at once, then the rest on time."""
        self.loops += 1
        topics = list(self.publishers)
        if not topics:
            return
        count_skipped = self.loops == 1
        if self.origin_ns > self.bag.start_ns and self.latched:
            for topic, _ty, _t, raw in self.bag.raw_messages(sorted(self.latched), stop_ns=self.origin_ns):
                self._publish(topic, raw)
        start = time.monotonic()
        last_poll = start
        clock = self.clock
        if clock is not None:
            clock.begin(start, self.origin_ns, self.rate)
        for topic, _ty, t_ns, raw in self.bag.raw_messages(self.topics, start_ns=self.origin_ns):
            if topic not in self.publishers:
                if count_skipped:
                    self.skipped_types[self.bag.topics[topic][0]]['messages'] += 1
                continue
            due = start + due_offset_s(t_ns, self.origin_ns, self.rate)
            while True:
                now = time.monotonic()
                if clock is not None:
                    clock.tick(now, until_ns=t_ns)
                if now >= due:
                    break
                wake = due if clock is None else min(due, clock.next_tick())
                executor.spin_once(timeout_sec=min(wake - now, 0.05))
            if clock is not None:
                clock.before_message(now, t_ns)
            self._publish(topic, raw)
            if poll is not None and time.monotonic() - last_poll > 0.5:
                poll()
                last_poll = time.monotonic()

    def wait_for_acks(self, executor, timeout_s: float) -> list[str]:
        """Wait up to timeout_s in all for every reliable subscriber to acknowledge what was published (as
        ros2 bag play --wait-for-all-acked): a process that exits right after its last publish can take samples
        still in flight with it. Returns the topics not acknowledged in time (best-effort subscribers never
        acknowledge and are not waited for). Fast DDS acknowledges on the writer's next heartbeat, so this takes
        up to its heartbeat period (~2 s measured here) after the last message. The executor keeps spinning
        meanwhile (a recording goes on)."""
        from rclpy.duration import Duration

        end = time.monotonic() + max(0.0, timeout_s)
        pending = [t for t in self.publishers if self.published.get(t)]
        while pending and time.monotonic() < end:
            pending = [t for t in pending if not self.publishers[t].wait_for_all_acked(Duration(nanoseconds=0))]
            if pending:
                executor.spin_once(timeout_sec=0.05)
        self.unacked = pending
        return self.unacked

    def summary(self) -> dict:
        return {'published': dict(self.published), 'unacked_topics': list(self.unacked), 'skipped_types': self.skipped_types,
                'skipped_messages': sum(v['messages'] for v in self.skipped_types.values()), 'loops': self.loops,
                'latency_topic': self.latency_topic,
                'latency_ms': _distribution(self.latencies_ms) if self.latencies_ms else None,
                'clock': {'published': self.clock is not None, 'hz': self.clock.hz if self.clock else None,
                          'messages': self.clock.count if self.clock else 0}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='dynadepth-replay', formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description='Publish a rosbag2 (mcap or sqlite3) over ROS 2 with its original timing; optionally record '
                    'topics (e.g. the depth node output) into a new bag.')
    p.add_argument('bag', help='rosbag2 directory or .mcap/.db3 file')
    p.add_argument('--rate', type=float, default=1.0, help='playback speed factor')
    p.add_argument('--loop', action='store_true', help='play again from the start until Ctrl-C')
    p.add_argument('--start-offset', type=float, default=0.0, metavar='S', help='skip the first S seconds')
    p.add_argument('--topics', nargs='+', help='topics to replay (default: all)')
    p.add_argument('--clock', nargs='?', type=clock_hz, const=DEFAULT_CLOCK_HZ, metavar='HZ',
                   help=f'publish /clock in bag time at HZ ({DEFAULT_CLOCK_HZ:g} without a value) and before each '
                        f'message, like ros2 bag play --clock, for nodes with use_sim_time:=true')
    p.add_argument('--ack-timeout', type=float, default=5.0, metavar='S',
                   help='after the last message, wait up to S seconds for reliable subscribers to acknowledge '
                        'everything (like ros2 bag play --wait-for-all-acked) so that exiting loses nothing; 0 or less: '
                        'exit at once')
    p.add_argument('--record', metavar='OUT', help='record --record-topics into this new bag')
    p.add_argument('--record-topics', nargs='+', default=['/depth'], help='topics to record')
    p.add_argument('--record-storage', choices=('mcap', 'sqlite3'), default='mcap')
    p.add_argument('--wait-subscribers', nargs='+', default=[], metavar='TOPIC',
                   help='before playing, wait until these replayed topics have a subscriber (e.g. the node)')
    p.add_argument('--wait-timeout', type=float, default=15.0, help='seconds to wait for subscribers / record topics')
    p.add_argument('--linger', type=float, default=1.0, help='seconds to keep recording after the last message')
    p.add_argument('--record-settle', type=float, default=0.5, metavar='S',
                   help='once the record topics are subscribed, wait S seconds before playing: this side matches '
                        'the publishers at once, but a publisher (e.g. the node\'s /depth) sends nothing to a new '
                        'subscriber until it has discovered it in turn')
    p.add_argument('--latency-topic', default='/camera/image_raw',
                   help='replayed topic whose stamps the recorded messages carry (stamp→publish latency)')
    p.add_argument('--summary', metavar='FILE', help='also write the summary as JSON')
    p.add_argument('--node-name', default='dynadepth_replay')
    return p


def _spin_for(executor, seconds: float) -> None:
    """Run callbacks (e.g. the recorder's) for `seconds` of wall time; nothing for seconds <= 0."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)


def _write_json(path: str, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def log(text: str) -> None:
        print(f'[dynadepth-replay] {text}', file=sys.stderr, flush=True)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from dynadepth_ros.ros_compat import export_fastdds_profile

    try:
        bag = BagReader(args.bag).open()
    except BagError as exc:
        log(f'error: {exc}')
        return 1
    export_fastdds_profile()      # the replayed camera images are ours to send: use the profile
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)

    def on_term(*_):
        raise _Stop()

    old_term = signal.signal(signal.SIGTERM, on_term)
    node = rclpy.create_node(args.node_name)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    recorder = replayer = None
    status, rc = 'complete', 0
    t0 = time.monotonic()
    try:
        replayer = Replayer(node, bag, args.topics, args.rate, args.start_offset, global_topic(args.latency_topic), log,
                            clock_hz=args.clock)
        if args.record:
            recorder = Recorder(node, args.record, args.record_topics, args.record_storage, log,
                                on_message=replayer.note_received, log_time=replayer.publish_time_ns)
            recorder.poll()
        waits = [global_topic(t) for t in args.wait_subscribers]
        unknown = [t for t in waits if t not in replayer.publishers]
        if unknown:
            raise ReplayError(f'--wait-subscribers {unknown}: not replayed topics of this bag')
        replayer.wait_for(executor, lambda: all(replayer.publishers[t].get_subscription_count() > 0 for t in waits),
                          f'subscribers of {waits}', args.wait_timeout)
        if recorder is not None:
            def recorder_ready():
                recorder.poll()
                return recorder.matched()
            replayer.wait_for(executor, recorder_ready, f'record topics {recorder.pending or args.record_topics}',
                              args.wait_timeout)
            # our subscription matched their publisher (get_publisher_count) the moment it was created; their
            # publisher matches it only once their participant has processed our announcement, and until then
            # it does not send to it (a loaded CI run lost the first /depth of a bag that way)
            _spin_for(executor, args.record_settle)
        log(f'playing {args.bag} ({len(replayer.publishers)} topics) at rate {args.rate:g}'
            + (' in a loop' if args.loop else '') + (f' with /clock at {args.clock:g} Hz' if args.clock else ''))
        poll = recorder.poll if recorder is not None else None
        while True:
            replayer.play_once(executor, poll)
            if not args.loop:
                break
        if args.ack_timeout > 0 and replayer.wait_for_acks(executor, args.ack_timeout):
            log(f'warning: {", ".join(replayer.unacked)}: not every reliable subscriber acknowledged the last '
                f'messages within --ack-timeout {args.ack_timeout:g} s; they may have missed some')
        _spin_for(executor, args.linger if recorder is not None else 0.0)
    except (KeyboardInterrupt, _Stop):
        status, rc = 'interrupted', 130
    except (ReplayError, BagError) as exc:
        log(f'error: {exc}')
        status, rc = 'error', 1
    finally:
        signal.signal(signal.SIGTERM, old_term)
        summary = replayer.summary() if replayer is not None else {}
        summary.update({'status': status, 'bag': args.bag, 'rate': args.rate, 'wall_s': time.monotonic() - t0})
        if recorder is not None:
            out = recorder.close()
            summary['recorded'] = dict(recorder.counts)
            summary['recording'] = str(out)
            missing = recorder.pending
            if missing:
                summary['never_seen'] = missing
                log(f'warning: {missing} never appeared in the ROS graph; nothing recorded for them')
        node.destroy_node()
        rclpy.shutdown()        # joins rclpy's signal thread: only then is freeing the executor safe after Ctrl-C
        executor.shutdown()     # (see ros_compat.make_executor)
        bag.close()
    _print_summary(summary, log)
    if args.summary:
        _write_json(args.summary, summary)
    return rc


def _print_summary(s: dict, log) -> None:
    if not s.get('published') and s.get('status') == 'error':
        return
    log(f'{s.get("status")}: published {sum(s.get("published", {}).values())} messages on '
        f'{len(s.get("published", {}))} topics in {s.get("wall_s", 0):.1f} s ({s.get("loops", 0)} pass(es))')
    if s.get('skipped_messages') or s.get('skipped_types'):
        log(f'skipped {s["skipped_messages"]} messages of unavailable types: '
            + ', '.join(f'{k} ({", ".join(v["topics"])})' for k, v in s['skipped_types'].items()))
    clock = s.get('clock') or {}
    log(f'/clock: {clock["messages"]} messages in bag time ({clock["hz"]:g} Hz and before messages)'
        if clock.get('published') else '/clock: not published (--clock publishes it for use_sim_time nodes)')
    if 'recorded' in s:
        log(f'recorded {s["recorded"]} into {s["recording"]}')
    lat = s.get('latency_ms')
    if lat:
        log(f'stamp→publish latency ({s["latency_topic"]} → recorded): p50 {lat["p50"]:.1f} ms, '
            f'p90 {lat["p90"]:.1f} ms, max {lat["max"]:.1f} ms over {lat["count"]} messages')


if __name__ == '__main__':
    sys.exit(main())
