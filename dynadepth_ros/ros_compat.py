"""What differs between the ROS 2 distributions the package runs on (Humble, Jazzy, Kilted), in one place.

  QoS event callbacks   rclpy.event_handler since Iron; rclpy.qos_event on Humble. The classes are the same:
                        PublisherEventCallbacks / SubscriptionEventCallbacks(incompatible_qos=cb), and the event
                        passed to cb carries `last_policy_kind` (for rclpy.qos.qos_policy_name_from_kind).
  host-only discovery   ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST since Iron; Humble only knows ROS_LOCALHOST_ONLY=1
                        (Jazzy still honours that one with a deprecation warning, Kilted ignores it silently).
  EventsExecutor        rclpy.experimental.EventsExecutor (callbacks dispatched from C++) exists in Jazzy and
                        Kilted, not in Humble. Its spin() did not let other Python threads run here (rclpy 9.1.2: the
                        node's worker thread never ran and the process ignored SIGINT), its spin_once(timeout) does,
                        so spin_node() loops over spin_once.
  Fast DDS XML profile  Fast DDS 3.x (Kilted on) reads FASTDDS_DEFAULT_PROFILES_FILE; Fast DDS 2.x (Humble, Iron,
                        Jazzy) reads only FASTRTPS_DEFAULT_PROFILES_FILE and ignores the other without a word, so a
                        profile exported under the new name is simply not used there.

The distribution is told by rclpy's own version (each distribution has its own major version: Humble 3,
Iron 4, Jazzy 7, Kilted 9), read from rclpy's package metadata, or else from ROS_DISTRO (which a sourced
ROS 2 install sets).

Freeing the DDS participant: rclpy finalises a context, and with it the participant and its Fast DDS shared memory,
only once every handle made in it is gone. A LifecycleNode keeps a C++ state machine that holds the node's handle
and that destroy_node() leaves alone (rclpy 7 and 9), so the participant lives as long as the Python node object.
When a thread that cannot be stopped still references the node at exit, that is forever: the process exits
without finalising the participant, and its segments stay in /dev/shm. free_participant() frees it explicitly.
"""
from __future__ import annotations

import os
from importlib import metadata
from typing import MutableMapping

try:                                        # Iron and newer
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:                         # Humble
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks

try:                                        # Jazzy and newer
    from rclpy.experimental import EventsExecutor
except ImportError:                         # Humble
    EventsExecutor = None

try:                                        # Humble and newer (the deferred signal thread came with it)
    from rclpy.signals import uninstall_signal_handlers
except ImportError:                         # no signal thread to stop
    def uninstall_signal_handlers() -> None:
        pass

__all__ = ['PublisherEventCallbacks', 'SubscriptionEventCallbacks', 'rclpy_major', 'fastdds_profile_variable',
           'export_fastdds_profile', 'localhost_discovery_env', 'EXECUTORS', 'resolve_executor', 'make_executor',
           'spin_node', 'uninstall_signal_handlers', 'free_participant']

EXECUTORS = ('auto', 'events', 'single_threaded')
_FIRST_EVENTS_DEFAULT_MAJOR = 9             # Kilted: the EventsExecutor's own release line (Jazzy has a backport)

PROFILE_VARIABLES = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')   # Fast DDS 3.x, 2.x
_DISTRO_RCLPY_MAJOR = {'humble': 3, 'iron': 4, 'jazzy': 7, 'kilted': 9, 'rolling': 10}
_FIRST_FASTDDS3_MAJOR = 9                   # Kilted: Fast DDS 3.x
_FIRST_DISCOVERY_RANGE_MAJOR = 4            # Iron: ROS_AUTOMATIC_DISCOVERY_RANGE


def rclpy_major(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """Major version of the installed rclpy (None when neither its metadata nor ROS_DISTRO tells)."""
    try:
        return int(metadata.version('rclpy').split('.')[0])
    except (metadata.PackageNotFoundError, ValueError):
        return _DISTRO_RCLPY_MAJOR.get(environ.get('ROS_DISTRO', '').lower())


def fastdds_profile_variable(major: int | None) -> str | None:
    """The environment variable this distribution's Fast DDS reads its XML profile from (None: unknown)."""
    if major is None:
        return None
    return PROFILE_VARIABLES[0] if major >= _FIRST_FASTDDS3_MAJOR else PROFILE_VARIABLES[1]


def export_fastdds_profile(environ: MutableMapping[str, str] = os.environ, major: int | None = None) -> list[str]:
    """If a Fast DDS profile is set under either variable name, set it under the one this distribution's Fast DDS
    reads too (both when the distribution is unknown); returns the names it set. Call before rclpy.init().
    major: rclpy's major version; None = rclpy_major(environ)."""
    given = next((environ[v] for v in PROFILE_VARIABLES if environ.get(v)), None)
    if given is None:
        return []
    wanted = fastdds_profile_variable(rclpy_major(environ) if major is None else major)
    names = [wanted] if wanted else list(PROFILE_VARIABLES)
    added = [v for v in names if not environ.get(v)]
    for v in added:
        environ[v] = given
    return added


def localhost_discovery_env(major: int | None) -> dict[str, str]:
    """Environment restricting DDS discovery to this host, in the form this distribution understands
    (unknown: the Iron-and-newer one)."""
    if major is not None and major < _FIRST_DISCOVERY_RANGE_MAJOR:
        return {'ROS_LOCALHOST_ONLY': '1'}
    return {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}


def resolve_executor(kind: str, major: int | None = None) -> str:
    """The executor make_executor() makes for `kind`: 'events' only where this rclpy has an EventsExecutor; 'auto' is
    'events' on Kilted and newer and 'single_threaded' on Jazzy (whose EventsExecutor is a backport: in two
    full Jazzy suites under load the node twice missed camera_info with it, never reproduced alone) and Humble.
    major: rclpy's major version; None = rclpy_major()."""
    if kind not in EXECUTORS:
        raise ValueError(f'executor must be one of {", ".join(EXECUTORS)}, not {kind!r}')
    if kind == 'auto':
        major = rclpy_major() if major is None else major
        kind = 'events' if major is not None and major >= _FIRST_EVENTS_DEFAULT_MAJOR else 'single_threaded'
    return 'single_threaded' if kind == 'events' and EventsExecutor is None else kind


def make_executor(node, kind: str = 'auto'):
    """The executor for `kind` with `node` added: 'events' = rclpy.experimental.EventsExecutor (callbacks
    dispatched from C++), 'single_threaded' = rclpy.executors.SingleThreadedExecutor (also for 'events' where
    this rclpy has none), or 'auto' (resolve_executor).

    The caller keeps a reference to it until it has destroyed the node, shut rclpy down and called
    uninstall_signal_handlers() (which joins rclpy's signal thread; rclpy.try_shutdown() does not). Freeing an
    executor right after Ctrl-C can kill the process: rclpy's signal thread (rclpy 7 /
    Jazzy) walks the list of registered signal guard conditions without a lock, and an executor's destruction
    unregisters its guard condition and frees that list (depth_node died of SIGSEGV in rcl_trigger_guard_condition
    in about 1 of 10 Ctrl-Cs under test when spin_node owned its executor)."""
    from rclpy.executors import SingleThreadedExecutor

    events = resolve_executor(kind) == 'events'
    executor = EventsExecutor(context=node.context) if events else SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    return executor


def spin_node(node, executor, *, poll_sec: float = 0.25) -> None:
    """Run `node`'s callbacks on `executor` (make_executor) until the node's context shuts down (Ctrl-C; returns)
    or a callback raises (the exception propagates, as from SingleThreadedExecutor.spin()).

    poll_sec: longest wait of one EventsExecutor spin_once, i.e. how late a shutdown is noticed (its spin() kept
    the GIL here, see above)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    events = not isinstance(executor, SingleThreadedExecutor)   # EventsExecutor is a factory function, not a class
    # no executor.shutdown() here either: the caller still stops its own threads and destroys the node after the
    # spin, and shutting the executor down first made a Jazzy depth_node die of SIGSEGV on Ctrl-C (see above)
    try:
        if not events:
            executor.spin()
        while events and rclpy.ok(context=node.context):
            executor.spin_once(timeout_sec=poll_sec)
    except ExternalShutdownException:      # the context shut down while waiting: the end of the spin
        pass


def free_participant(node, context) -> None:
    """Finalise `context` now, and with it the DDS participant and its shared memory, instead of when the last
    Python reference to `node` goes (module docstring). Call it after node.destroy_node(), rclpy's shutdown and
    uninstall_signal_handlers(), with no executor left; node: an rclpy node or None."""
    state_machine = getattr(node, '_state_machine', None)      # rclpy's LifecycleNode: destroy_node() leaves it
    if state_machine is not None:
        state_machine.destroy_when_not_in_use()
    context.destroy()
