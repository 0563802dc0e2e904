"""The XML launch file and the parameter presets, checked without the `launch` package (not installable here):
every file they name exists, every parameter they set is one the node declares with a compatible type and
range, every remap targets a node topic, and rclpy itself accepts each preset as a --params-file; the FastDDS
profile reaches the node process only and never overrides the user's; the launch arguments users expect
(use_sim_time, log_level, namespace, autostart) are declared and reach the node."""
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from dynadepth_ros.node import PARAMETERS, TRANSPORTS, DepthNode
from dynadepth_ros.inference import BACKENDS, PRECISIONS

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch' / 'dynadepth.launch.xml'
PRESETS = sorted(p for p in (REPO / 'config').glob('*.yaml') if 'ros__parameters' in p.read_text())   # node presets
NODE_INPUTS = {'image', 'camera_info', 'instance_mask'}
CHOICES = {'backend': BACKENDS, 'precision': PRECISIONS, 'image_transport': TRANSPORTS}
RCLPY_PARAMETERS = {'use_sim_time': False}      # declared by rclpy itself for every node


def _resolve(text: str, args: dict, env: dict | None = None) -> str:
    """Substitute $(var), $(find-pkg-share) and $(env NAME [default]) like launch does (env: the launching
    shell's environment, default none set)."""
    env = {} if env is None else env

    def sub(m):
        kind, _, rest = m.group(1).partition(' ')
        if kind == 'var':
            assert rest in args, f'$(var {rest}) has no <arg> with a default'
            return args[rest]
        if kind == 'find-pkg-share':
            assert rest == 'dynadepth_ros', f'unexpected package {rest}'
            return str(REPO)          # installed share/dynadepth_ros mirrors launch/ and config/ of the repo
        if kind == 'env':
            name, _, default = rest.partition(' ')
            assert name in env or default, f'$(env {name}) without a default fails when {name} is unset'
            return env.get(name, default)
        raise AssertionError(f'unsupported substitution $({m.group(1)})')
    for _ in range(5):                # nested substitutions resolve from the inside out
        text = re.sub(r'\$\(([^()]*)\)', sub, text)
    return text


def _check_value(name, value, where):
    if name in RCLPY_PARAMETERS:
        assert type(value) is type(RCLPY_PARAMETERS[name]), f'{where}: {name}={value!r}'
        return
    assert name in PARAMETERS, f'{where}: the node declares no parameter {name!r}'
    default, desc = PARAMETERS[name]
    assert type(value) is type(default), f'{where}: {name}={value!r} is {type(value).__name__}, ' \
                                         f'the node declares {type(default).__name__}'
    for r in desc.integer_range:
        assert r.from_value <= value <= r.to_value, f'{where}: {name}={value} outside {r.from_value}..{r.to_value}'
    for r in desc.floating_point_range:
        assert r.from_value <= value <= r.to_value, f'{where}: {name}={value} outside {r.from_value}..{r.to_value}'
    if name in CHOICES:
        assert value in CHOICES[name], f'{where}: {name}={value!r} not one of {CHOICES[name]}'
    assert not desc.read_only or name == 'autostart' or value == default, f'{where}: {name} is read-only'


@pytest.fixture(scope='module')
def launch():
    root = ET.parse(LAUNCH).getroot()
    args = {a.get('name'): a.get('default') for a in root.iter('arg')}
    return root, args


def test_launch_file_names_our_package_executable_and_existing_files(launch):
    root, args = launch
    assert root.tag == 'launch'
    (node,) = root.iter('node')
    assert node.get('pkg') == ET.parse(REPO / 'package.xml').getroot().findtext('name')
    assert re.search(rf"'{node.get('exec')} = dynadepth_ros\.node:main'", (REPO / 'setup.py').read_text())
    preset_files = [Path(_resolve(p.get('from'), {**args, 'preset': preset.stem}))
                    for p in node.iter('param') if p.get('from') for preset in PRESETS]
    assert preset_files and all(f.is_file() for f in preset_files)
    assert (REPO / 'config' / f'{args["preset"]}.yaml').is_file(), 'the default preset must exist'
    for word in ('cpu', 'desktop_gpu', 'jetson'):
        assert (REPO / 'config' / f'{word}.yaml').is_file() and word in root.find("arg[@name='preset']").get('description')


def test_launch_file_sets_only_declared_parameters_and_remaps_node_topics(launch):
    root, args = launch
    (node,) = root.iter('node')
    for p in node.iter('param'):
        if p.get('name'):
            raw = _resolve(p.get('value'), args)
            value = yaml.safe_load(raw) if raw != '' else ''     # launch_ros reads values as YAML, '' stays ''
            _check_value(p.get('name'), value, f'{LAUNCH.name} <param {p.get("name")}>')
    remaps = {r.get('from'): _resolve(r.get('to'), args) for r in node.iter('remap')}
    assert set(remaps) <= NODE_INPUTS and {'image', 'camera_info'} <= set(remaps)
    assert all(t.startswith('/') for t in remaps.values())


@pytest.mark.parametrize('preset', PRESETS, ids=lambda p: p.stem)
def test_preset_sets_only_declared_parameters_with_valid_values(preset):
    doc = yaml.safe_load(preset.read_text())
    assert list(doc) == ['/**'] and list(doc['/**']) == ['ros__parameters']
    params = doc['/**']['ros__parameters']
    for name, value in params.items():
        _check_value(name, value, preset.name)


@pytest.mark.parametrize('preset', PRESETS, ids=lambda p: p.stem)
def test_rclpy_accepts_the_preset_as_a_params_file(preset):
    rclpy = pytest.importorskip('rclpy')
    from rclpy.context import Context
    ctx = Context()
    rclpy.init(args=['--ros-args', '--params-file', str(preset)], context=ctx)
    try:
        node = DepthNode('dynadepth', context=ctx)      # declares everything; autostart is main()'s job
        try:
            want = yaml.safe_load(preset.read_text())['/**']['ros__parameters']
            assert {k: node.get_parameter(k).value for k in want} == want
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


# ---------------------------------------------------------------------------- FastDDS profile scoping
PROFILE_VAR = 'FASTDDS_DEFAULT_PROFILES_FILE'
SHIPPED_PROFILE = REPO / 'config' / 'fastdds_large_images.xml'


def _node_profile(root, args, env):
    """The FASTDDS_DEFAULT_PROFILES_FILE the node process gets when launched from a shell with `env`."""
    (node,) = root.iter('node')
    values = [_resolve(e.get('value'), args, env) for e in node.findall('env') if e.get('name') == PROFILE_VAR]
    assert len(values) == 1, f'the <node> must set {PROFILE_VAR} in its own environment (<env>) exactly once'
    return values[0]


def test_fastdds_profile_is_scoped_to_the_node_process(launch):
    root, _ = launch
    global_env = [e for e in root.iter() if e.tag in ('set_env', 'set_environment_variable', 'unset_env')
                  and e.get('name', '').startswith('FASTDDS')]
    assert not global_env, ('a launch-level <set_env> changes FastDDS for every process started after it '
                            '(camera drivers, RViz, other nodes); set it in the <node> (<env>) instead')
    (node,) = root.iter('node')
    assert all(child.tag != 'set_env' for child in node)


def test_fastdds_profile_defaults_to_the_shipped_one_but_never_overrides_the_users(launch):
    root, args = launch
    shipped = Path(_node_profile(root, args, env={}))
    assert shipped == SHIPPED_PROFILE and shipped.is_file()
    assert _node_profile(root, args, env={PROFILE_VAR: '/etc/robot/fastdds.xml'}) == '/etc/robot/fastdds.xml'
    assert _node_profile(root, {**args, 'fastdds_profile': '/opt/mine.xml'}, env={}) == '/opt/mine.xml'


def _transports(profile: Path):
    """{transport_id: descriptor element} and the default participant's rtps element of a FastDDS profile."""
    root = ET.parse(profile).getroot()
    ns = {'d': 'http://www.eprosima.com'}
    assert root.tag == '{http://www.eprosima.com}dds'
    descs = {d.findtext('d:transport_id', namespaces=ns): d for d in root.iterfind('.//d:transport_descriptor', ns)}
    (part,) = [p for p in root.iterfind('.//d:participant', ns) if p.get('is_default_profile') == 'true']
    return descs, part.find('d:rtps', ns), ns


def test_shipped_profile_keeps_shm_for_large_images_and_udp_on_every_interface():
    descs, rtps, ns = _transports(SHIPPED_PROFILE)
    used = [t.text for t in rtps.iterfind('d:userTransports/d:transport_id', ns)]
    assert set(used) <= set(descs) and used
    kinds = {descs[t].findtext('d:type', namespaces=ns): descs[t] for t in used}
    assert set(kinds) == {'SHM', 'UDPv4'}, f'user transports {kinds}: SHM for this host and UDPv4 for others'
    depth_1280x720 = 1280 * 720 * 4
    shm = kinds['SHM']
    assert int(shm.findtext('d:segment_size', namespaces=ns)) >= 4 * depth_1280x720
    assert int(shm.findtext('d:maxMessageSize', namespaces=ns)) >= 2 * depth_1280x720
    udp = kinds['UDPv4']
    allow = [e.get('name') or e.text for e in udp.iter() if e.tag.endswith(('interface', 'address'))]
    assert not allow and udp.find('d:interfaces', ns) is None and udp.find('d:interfaceWhiteList', ns) is None, \
        f'UDPv4 limited to {allow}: other computers on the robot (and a remote RViz) would see nothing'
    for tag in ('sendBufferSize', 'receiveBufferSize'):
        assert int(udp.findtext(f'd:{tag}', namespaces=ns)) >= depth_1280x720, \
            f'{tag}: one 1280x720 frame from another host must fit in the socket buffer'
    # builtin transports off: otherwise FastDDS adds its own (small-segment) SHM and UDP next to ours
    assert rtps.findtext('d:useBuiltinTransports', namespaces=ns) == 'false'


# ---------------------------------------------------------------------------- launch arguments users expect
EXPECTED_ARGS = {'use_sim_time': 'false', 'log_level': 'info', 'namespace': '', 'autostart': 'true'}


def test_launch_arguments_users_expect_are_declared_and_passed_to_the_node(launch):
    root, args = launch
    for name, default in EXPECTED_ARGS.items():
        (arg,) = root.findall(f"arg[@name='{name}']")
        assert arg.get('default') == default and arg.get('description'), name
    (node,) = root.iter('node')
    params = {p.get('name'): p.get('value') for p in node.iter('param') if p.get('name')}
    assert params['use_sim_time'] == '$(var use_sim_time)' and params['autostart'] == '$(var autostart)'
    assert node.get('namespace') == '$(var namespace)'
    assert '--log-level $(var log_level)' in node.get('ros_args', '')
    assert PARAMETERS['autostart'][0] is True and yaml.safe_load(args['autostart']) is True
    assert yaml.safe_load(args['use_sim_time']) is False


NODE_FROM_ARGS = """
import json, sys
import rclpy
from rclpy.logging import LoggingSeverity
from dynadepth_ros.node import DepthNode
name, args = sys.argv[1], sys.argv[2:]
rclpy.init(args=args)
node = DepthNode(name)
print(json.dumps({'namespace': node.get_namespace(), 'use_sim_time': node.get_parameter('use_sim_time').value,
                  'autostart': node.get_parameter('autostart').value,
                  'debug': node.get_logger().get_effective_level() == LoggingSeverity.DEBUG}))
node.destroy_node()
rclpy.shutdown()
"""


def test_rclpy_accepts_the_launch_file_node_command_line(launch, tmp_path):
    """Resolve the launch file with non-default arguments into what launch_ros hands the process (--ros-args with
    --log-level, the namespace and a params file of the <param name=...> values read as YAML), and start the node
    from it in a process of its own (--log-level is process-wide)."""
    pytest.importorskip('rclpy')
    root, args = launch
    args = {**args, 'use_sim_time': 'true', 'log_level': 'debug', 'namespace': 'front', 'autostart': 'false'}
    (node_el,) = root.iter('node')
    params = {}
    for p in node_el.iter('param'):
        if p.get('name'):
            raw = _resolve(p.get('value'), args)
            params[p.get('name')] = yaml.safe_load(raw) if raw != '' else ''     # launch_ros reads values as YAML
    params_file = tmp_path / 'launch_params.yaml'
    params_file.write_text(yaml.safe_dump({'/**': {'ros__parameters': params}}))
    ros_args = _resolve(node_el.get('ros_args'), args).split()
    ns = '/' + _resolve(node_el.get('namespace'), args).lstrip('/')
    res = subprocess.run([sys.executable, '-c', NODE_FROM_ARGS, _resolve(node_el.get('name'), args), '--ros-args',
                          *ros_args, '-r', f'__ns:={ns}', '--params-file', str(params_file)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {'namespace': '/front', 'use_sim_time': True, 'autostart': False, 'debug': True}
