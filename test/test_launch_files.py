"""The XML launch file and the parameter presets, checked without the `launch` package (not installable here):
every file they name exists, every parameter they set is one the node declares with a compatible type and
range, every remap targets a node topic, and rclpy itself accepts each preset as a --params-file."""
import re
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


def _resolve(text: str, args: dict) -> str:
    def sub(m):
        kind, _, rest = m.group(1).partition(' ')
        if kind == 'var':
            assert rest in args, f'$(var {rest}) has no <arg> with a default'
            return args[rest]
        if kind == 'find-pkg-share':
            assert rest == 'dynadepth_ros', f'unexpected package {rest}'
            return str(REPO)          # installed share/dynadepth_ros mirrors launch/ and config/ of the repo
        raise AssertionError(f'unsupported substitution $({m.group(1)})')
    for _ in range(5):                # nested substitutions resolve from the inside out
        text = re.sub(r'\$\(([^()]*)\)', sub, text)
    return text


def _check_value(name, value, where):
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
    (env,) = root.iter('set_env')
    assert env.get('name') == 'FASTDDS_DEFAULT_PROFILES_FILE'
    profile = Path(_resolve(env.get('value'), args))
    assert profile.is_file() and ET.parse(profile).getroot().tag.endswith('dds')
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
