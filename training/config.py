"""Typed pipeline configuration: dataclasses loaded from YAML presets, with `--set a.b=value` overrides.

Every value has one home:

    name, description          the run's name (default run dir `runs/<name>`) and a one-line summary
    data:    DataConfig        where the frames come from (training/data/config.py)
    scene:   SceneStageConfig  stage 1: model (SceneModelConfig), loop settings, phase schedule
    masks:   MasksConfig       the stages that learn instance masks when the data has none
                               (objects.masks: learned; training/masks/config.py)
    objects, dsa, final        stages 2-4
    distill: DistillStageConfig  optional: the final network distilled into an INT8-friendly network
    eval:    EvalConfig        depth range and lead-car rule of `python -m training evaluate`
    export:  ExportConfig      ONNX export settings and the torch-vs-ONNX Runtime tolerance; export.int8:
                               `python -m training run` ends with the INT8 copy of the final model
    runtime: RuntimeConfig     device, threads, loader workers, progress bars; never changes results,
                               so it is left out of the config hash

A preset is a YAML file in `training/presets/`; `extends: other-preset` deep-merges it over another
preset. Later stages (objects, dsa, final) add their own sections here. Unknown keys are errors.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dynadepth_ros.metrics import MAX_DEPTH, MIN_DEPTH
from training.data.config import DataConfig
from training.loop import LoopConfig
from training.masks.config import MASK_SOURCES, MasksConfig
from training.networks.depth import DECODER_STYLES
from training.stages.dsa_model import DsaModelConfig
from training.stages.labelling import LabellingConfig
from training.stages.scene_model import SceneModelConfig

PRESET_DIR = Path(__file__).resolve().parent / 'presets'
HASHED = 'hashed'     # dataclass field metadata key: False = not part of any stage's config hash (see to_dict)
UNLESS_DEFAULT = 'unless_default'   # HASHED value: hashed only when set to something else than its default, so
                                    # an option added later at the old behaviour leaves finished runs up to date


class ConfigError(ValueError):
    """A configuration file, preset or override is wrong; the message says where and how to fix it."""


@dataclass
class PhaseConfig:
    """One block of the schedule: a fresh Adam over the sub-modules the model trains in `name`.

    steps: optimiser steps in this phase. lr: initial learning rate. The rate is multiplied by
    `lr_decay` at each step count (counted from the start of the phase) listed in `lr_decay_at`.
    """

    name: str
    steps: int
    lr: float = 2e-4
    lr_decay_at: list[int] = field(default_factory=list)
    lr_decay: float = 0.5


@dataclass
class SceneStageConfig:
    """Stage 1: scene depth + pose + residual motion.

    phases run in order (names are the SceneModel's: rigid, motion, joint). predict_splits are
    the splits whose frames get saved depth and residual flow after training.
    """

    model: SceneModelConfig = field(default_factory=SceneModelConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    phases: list[PhaseConfig] = field(default_factory=list)
    predict_splits: list[str] = field(default_factory=lambda: ['train', 'val'])
    predict_batch_size: int = 8


def _phases(*items) -> list:
    return [PhaseConfig(**p) for p in items]


@dataclass
class ObjectsStageConfig:
    """Stage 2: static/dynamic labelling (LabellingConfig), mask correspondences and the object network.

    correspondence: auto | splat | id — how an instance is found in frames t±gap (auto: id for
    synthetic data, whose ids are stable over time, else splat with the stage-1 geometry).
    check_splat_against_ids: on synthetic data (stable ids), also splat and record the agreement (IoU).
    min_triplet_area_fraction: an instance trains the object network only when its masks in t-gap,
    t and t+gap each cover this share of the image (reference 0.5 %).
    smoothness_weight: in-mask disparity smoothness of the object network.
    masks: topic (the data's instance masks: a dataset's mask/, a recording's mask topic) | learned (the
    masks the ground / seeds / instances stages learn from the data, for recordings without a mask topic;
    `run --bags` sets it when there is none). Hashed only when learned, so runs made before it stay up to date.
    """

    labelling: LabellingConfig = field(default_factory=LabellingConfig)
    masks: str = field(default='topic', metadata={HASHED: UNLESS_DEFAULT})
    correspondence: str = 'auto'
    check_splat_against_ids: bool = True
    min_triplet_area_fraction: float = 0.005
    smoothness_weight: float = 0.005
    splits: list[str] = field(default_factory=lambda: ['train', 'val'])
    loop: LoopConfig = field(default_factory=LoopConfig)
    phases: list[PhaseConfig] = field(default_factory=lambda: _phases({'name': 'object', 'steps': 1000}))
    infer_batch_size: int = 16

    def __post_init__(self):
        if self.masks not in MASK_SOURCES:
            raise ValueError(f"objects.masks must be one of {', '.join(MASK_SOURCES)}, got {self.masks!r}")
        if self.correspondence not in ('auto', 'splat', 'id'):
            raise ValueError(f"objects.correspondence must be auto, splat or id, got {self.correspondence!r}")
        if not 0 <= self.min_triplet_area_fraction < 1:
            raise ValueError(f'objects.min_triplet_area_fraction must be in [0, 1), got {self.min_triplet_area_fraction}')
        bad = sorted(set(self.splits) - {'train', 'val', 'test'})
        if bad or 'train' not in self.splits:
            raise ValueError(f'objects.splits must include train and name only train/val/test, got {self.splits}')


BOTTOM_EDGE_RULES = ('anchor', 'cap')
LABEL_SHAPES = ('object', 'scene')


@dataclass
class DsaStageConfig:
    """Stage 3: the Depth Scale Alignment network (DsaModelConfig), its training on static objects,
    and the pseudo labels. box_margin_px: the object's box is its tight box grown by this many pixels
    on each side, the same in training and inference (the reference dilated only at inference); it must
    be at least ground_step_px, the distance of the neighbours the ground normals come from.
    extend_to_ground: each object reaches down to the first ground pixel below it in every column (for learned
    masks, which stop short of a car's bottom): the anchor reads the ground there and the pseudo label covers
    the gap (training.stages.dsa_model.dsa_inputs).
    bottom_edge: an object with no ground below its mask down to the image's bottom (a near car that goes on below
    the image) has its contact with the ground out of view, and the ground the anchor reads at its lowest row lies
    behind it: 'anchor' (default) uses it as it is; 'cap' takes it as the upper bound it is and uses the scale that
    puts the object at its stage-1 depth when that is nearer (with learned masks at cpu-small the anchor put such
    cars at 1.59x their depth and the final network carried it to every object within 5 m, docs/training.md).
    label_shape: the depth inside a dynamic object's pseudo label. 'object' (default, the reference) is β·D̃, the
    stage-2 object depth at the DSA scale; 'scene' keeps the DSA scale (the label's median over the object) and
    takes the shape from the stage-1 depth: k·D_scene with k = median(β·D̃ / D_scene) over the object's pixels.
    With learned masks at cpu-small, β·D̃ on the pixels labelled dynamic was no better than stage 1 (train movers
    AbsRel 0.379 against 0.391; 'scene' 0.304), but the final networks trained on 'scene' labels were not better
    (test moving objects 0.84x stage 1 against 0.78x with the floating cue off, 0.79x against 0.80x with it on; one
    seed each, docs/training.md), so the default stays the reference's."""

    model: DsaModelConfig = field(default_factory=DsaModelConfig)
    box_margin_px: int = 2
    ground_angle_deg: float = 15.0
    ground_step_px: int = 2
    augment_flip: float = 0.5
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(batch_size=16))
    phases: list[PhaseConfig] = field(default_factory=lambda: _phases(
        {'name': 'dsa', 'steps': 1500, 'lr': 1e-3, 'lr_decay_at': [600, 1200]}))
    infer_batch_size: int = 32
    extend_to_ground: bool = field(default=False, metadata={HASHED: UNLESS_DEFAULT})
    bottom_edge: str = field(default='anchor', metadata={HASHED: UNLESS_DEFAULT})
    label_shape: str = field(default='object', metadata={HASHED: UNLESS_DEFAULT})

    def __post_init__(self):
        if self.bottom_edge not in BOTTOM_EDGE_RULES:
            raise ValueError(f'dsa.bottom_edge must be one of {BOTTOM_EDGE_RULES}, got {self.bottom_edge!r}')
        if self.label_shape not in LABEL_SHAPES:
            raise ValueError(f'dsa.label_shape must be one of {LABEL_SHAPES}, got {self.label_shape!r}')
        if self.ground_step_px < 1:
            raise ValueError(f'dsa.ground_step_px must be >= 1, got {self.ground_step_px}')
        if self.box_margin_px < self.ground_step_px:
            # ground normals come from neighbours ground_step_px away: with a smaller margin the object's
            # own (hidden) scene depth would decide which context pixels count as ground
            raise ValueError(f'dsa.box_margin_px ({self.box_margin_px}) must be >= dsa.ground_step_px '
                             f'({self.ground_step_px}) so the object\'s scene depth cannot leak into the input')


@dataclass
class FinalStageConfig:
    """Stage 4: the final depth network, started from stage 1 and trained with the stage-1 losses
    (phase names as stage 1's; normally one `joint` phase) plus pseudo_weight x the pseudo-label loss on
    dynamic-object pixels (reference: 0.1, L1 in metres, lr 2e-5) and static_weight x the relative L1 to
    the label on the static pixels, where the label is the stage-1 depth (0 = off, the reference).

    pseudo_loss: 'l1' = |D - kP| in metres (reference); 'relative' = |D - kP| / kP. With a sigmoid-
    disparity network the metres form weights a pixel's pull on the network output by depth squared,
    so distant labels (the least certain) dominate; the relative form weights by depth.

    dynamic_photometric: False leaves the pixels labelled dynamic out of the photometric loss, so only
    their pseudo labels set their depth (True, the reference, keeps the stage-1 losses everywhere;
    there the residual motion lets the photometric loss hold them at their stage-1 depth).

    pseudo_align: 'static' scales the label by k = median(D / P) over its static pixels each step (the
    reference aligns by a median too); 'none' uses the label as it is (k = 1: stage 4 starts from the
    stage-1 network whose scale the labels have, metric or not). k follows the network's own scale, so
    with 'static' a network that pulls every car nearer while it learns the labels lowers k and its
    own targets with it, and nothing in the pseudo-label term holds the scene's scale.

    unexplained_motion: > 0 leaves out of the photometric and static-anchor terms the pixels not labelled
    dynamic whose optical flow disagrees with the flow stage 1's depth and camera motion predict by at least
    this |log ratio| (training.masks.seeds.flow_disagreement; the ground network's road excepted when the run
    has one): moving objects that no mask caught, which those terms might hold where stage 1 put them;
    0 = off (the reference, and the default: with learned masks at cpu-small it changed nothing measurable,
    docs/training.md).

    scale_weight: > 0 adds scale_weight x |mean over the label's static pixels of log(D / P)| per image and scale:
    it holds the scene's scale at stage 1's (the pseudo-label term otherwise shrinks the whole scene while it
    pulls the labelled cars nearer) and, unlike static_weight, leaves the shape of the static scene free, so
    unmasked parts of moving objects are not held at their stage-1 depth; 0 = off (the default). Measured in
    place of static_weight at cpu-small it was worse (test whole image 1.07x stage 1 against 0.92x; the static
    objects still shrank against the road: docs/training.md)."""

    pseudo_weight: float = 0.1
    pseudo_loss: str = 'l1'
    static_weight: float = 0.0
    dynamic_photometric: bool = True
    pseudo_align: str = field(default='static', metadata={HASHED: UNLESS_DEFAULT})
    decoder: str = field(default='elu_reflect', metadata={HASHED: UNLESS_DEFAULT})
    unexplained_motion: float = field(default=0.0, metadata={HASHED: UNLESS_DEFAULT})
    scale_weight: float = field(default=0.0, metadata={HASHED: UNLESS_DEFAULT})
    loop: LoopConfig = field(default_factory=LoopConfig)
    phases: list[PhaseConfig] = field(default_factory=lambda: _phases({'name': 'joint', 'steps': 1000, 'lr': 2e-5}))

    def __post_init__(self):
        if self.pseudo_weight < 0:
            raise ValueError(f'final.pseudo_weight must be >= 0, got {self.pseudo_weight}')
        if self.static_weight < 0:
            raise ValueError(f'final.static_weight must be >= 0, got {self.static_weight}')
        if not self.scale_weight >= 0:
            raise ValueError(f'final.scale_weight must be >= 0 (0 = off), got {self.scale_weight}')
        if self.pseudo_loss not in ('l1', 'relative'):
            raise ValueError(f"final.pseudo_loss must be 'l1' or 'relative', got {self.pseudo_loss!r}")
        if self.pseudo_align not in ('static', 'none'):
            raise ValueError(f"final.pseudo_align must be 'static' or 'none', got {self.pseudo_align!r}")
        if self.decoder not in DECODER_STYLES:
            raise ValueError(f'final.decoder must be one of {DECODER_STYLES}, got {self.decoder!r}')
        if not self.unexplained_motion >= 0:
            raise ValueError(f'final.unexplained_motion must be a |log ratio| >= 0 (0 = off), got {self.unexplained_motion}')


@dataclass
class DistillStageConfig:
    """The optional stage after stage 4 (training.stages.distill): the final network distilled into a
    network with decoder style `decoder` ('' = off, the stage does not run; relu_zero: ReLU and zero
    padding, the decoder that quantizes to INT8 without float islands). The student starts from the final
    weights and learns the teacher's full-resolution depth (mean |log ratio|) on the augmented train frames."""

    decoder: str = ''
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(batch_size=8))
    phases: list[PhaseConfig] = field(default_factory=lambda: _phases({'name': 'student', 'steps': 1000, 'lr': 1e-4,
                                                                       'lr_decay_at': [700]}))

    def __post_init__(self):
        if self.decoder and self.decoder not in DECODER_STYLES:
            raise ValueError(f"distill.decoder must be '' (off) or one of {DECODER_STYLES}, got {self.decoder!r}")


@dataclass
class EvalConfig:
    """Depth evaluation (design §8): valid GT in (min_depth, max_depth) metres.

    Lead cars: moving cars whose box centre is ahead (z > 0) within lead_max_lateral metres of the
    optical axis and whose velocity points within lead_max_heading_deg of the ego's direction of
    travel (an explicit instance `role: lead` from the generator wins over this rule).
    """

    min_depth: float = MIN_DEPTH
    max_depth: float = MAX_DEPTH
    lead_max_lateral: float = 2.5
    lead_max_heading_deg: float = 30.0
    lead_classes: list[str] = field(default_factory=lambda: ['car'])
    batch_size: int = 8


@dataclass
class ExportConfig:
    """ONNX export: opset, the largest batch the dynamic axis allows, and the largest relative
    depth difference |onnx - torch| / torch on fixed check images at which the export is accepted.

    tolerance: 1e-3. The sigmoid-disparity output amplifies float32 rounding towards the far end of the depth
    range (a pixel near max_depth moves by max_depth / min_depth times its disparity's rounding): a healthy
    cpu-small final network measured 1.07e-4 (0.0105 m, far pixels; 2026-12-07) and was refused under the
    former 1e-4 after 23 minutes of training, while a wrong operator shows in percent. It is a check, not an
    output setting, so hash_settings() keeps it out of the stages' hashes: changing it re-runs nothing."""

    opset: int = 18
    max_batch: int = 16
    tolerance: float = 1e-3
    # after the last stage, `python -m training run` writes final/final_int8.onnx (training/quantize.py) calibrated
    # on the run's train split, for int8_target cpu (ONNX Runtime) or tensorrt; made after the stages, with its
    # own up-to-date check, so these are not in any stage's config hash (turning them on retrains nothing). With
    # the distill stage on (distill.decoder), the distilled network is the one quantized: distill/distill_int8.onnx.
    # int8_exclude: nodes kept in float besides training.quantize.DEFAULT_EXCLUDE (aliases there); full-res (the
    # decoder level after the last upsampling) measured faster and closer to FP32 on CPU (docs/models.md)
    int8: bool = field(default=False, metadata={HASHED: False})
    int8_target: str = field(default='cpu', metadata={HASHED: False})
    int8_max_abs_rel: float = field(default=0.03, metadata={HASHED: False})
    int8_exclude: list[str] = field(default_factory=lambda: ['full-res'], metadata={HASHED: False})

    def hash_settings(self) -> dict:
        """What the exported file depends on, for a stage's config hash: to_dict with the tolerance at the value
        it had before it left the hash (1e-4), so runs made before and after that keep their hashes."""
        d = to_dict(self)
        if 'tolerance' in d:
            d['tolerance'] = 1e-4
        return d

    def __post_init__(self):
        if not self.tolerance > 0:
            raise ValueError(f'export.tolerance must be > 0, got {self.tolerance}')
        if self.int8_target not in ('cpu', 'tensorrt'):
            raise ValueError(f"export.int8_target must be 'cpu' or 'tensorrt', got {self.int8_target!r}")


@dataclass
class RuntimeConfig:
    """How to run, not what to compute (excluded from the config hash).

    device: auto | cpu | cuda | cuda:N. threads: torch intra-op threads (0 = torch default).
    num_workers: DataLoader worker processes. debug_param_digest: each rank writes a digest of
    its parameters after training (used by the multi-process test).
    """

    device: str = 'auto'
    threads: int = 0
    num_workers: int = 0
    progress: bool = True
    debug_param_digest: bool = False


@dataclass
class PipelineConfig:
    name: str
    description: str = ''
    data: DataConfig = field(default_factory=DataConfig)
    scene: SceneStageConfig = field(default_factory=SceneStageConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    objects: ObjectsStageConfig = field(default_factory=ObjectsStageConfig)
    dsa: DsaStageConfig = field(default_factory=DsaStageConfig)
    final: FinalStageConfig = field(default_factory=FinalStageConfig)
    distill: DistillStageConfig = field(default_factory=DistillStageConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass


def to_dict(obj, all_fields: bool = False) -> typing.Any:
    """Plain YAML/JSON-able structure of a (nested) dataclass: dicts, lists, scalars. What stages hash: fields
    marked `metadata={HASHED: False}` (settings used after the stages) are left out unless all_fields."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name), all_fields) for f in dataclasses.fields(obj)
                if all_fields or _hashed(f, getattr(obj, f.name))}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, all_fields) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v, all_fields) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _hashed(f: dataclasses.Field, value) -> bool:
    mode = f.metadata.get(HASHED, True)
    return value != f.default if mode == UNLESS_DEFAULT else bool(mode)


def from_dict(cls, data, where: str = 'config'):
    """Build dataclass `cls` from a dict, checking keys and types; `where` names the place in errors."""
    return _convert(cls, data, where)


def _convert(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is typing.Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f'{where}: expected a mapping of {tp.__name__} fields, got {value!r}')
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(f'{where}: unknown key(s) {unknown}; {tp.__name__} has {sorted(fields)}')
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _convert(hints[name], value[name], f'{where}.{name}')
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f'{where}: required key {name!r} is missing')
        try:
            return tp(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f'{where}: {exc}') from exc
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f'{where}: {value!r} matches none of {args}: ' + '; '.join(errors))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f'{where}: must be one of {list(args)}, got {value!r}')
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{where}: expected a list, got {value!r}')
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f'{where}: expected {len(args)} items, got {len(value)}')
            return tuple(_convert(a, v, f'{where}[{i}]') for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else typing.Any
        out = [_convert(item, v, f'{where}[{i}]') for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f'{where}: expected a mapping, got {value!r}')
        kt, vt = args if args else (typing.Any, typing.Any)
        return {_convert(kt, k, where): _convert(vt, v, f'{where}.{k}') for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f'{where}: expected true or false, got {value!r}')
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f'{where}: expected an integer, got {value!r}')
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f'{where}: expected a number, got {value!r}')
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f'{where}: expected a string, got {value!r}')
    if tp is Path:
        return Path(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f'{where}: cannot read {value!r} as {tp}')


# ---------------------------------------------------------------------------------------------
# presets, files and overrides


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob('*.yaml'))


def _preset_path(name: str) -> Path:
    path = PRESET_DIR / f'{name}.yaml'
    if not path.is_file():
        raise ConfigError(f'unknown preset {name!r}; available: {", ".join(preset_names())} '
                          f'(`python -m training presets` lists them)')
    return path


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _load_yaml_tree(path: Path, seen: tuple = ()) -> dict:
    if path in seen:
        raise ConfigError(f'{path}: `extends` loop through {[str(p) for p in seen]}')
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f'{path} is not valid YAML: {exc}') from exc
    if not isinstance(raw, dict):
        raise ConfigError(f'{path}: the top level must be a mapping, got {type(raw).__name__}')
    parent = raw.pop('extends', None)
    if parent is None:
        return raw
    parent_path = Path(parent) if str(parent).endswith(('.yaml', '.yml')) else _preset_path(str(parent))
    if not parent_path.is_absolute() and not parent_path.is_file():
        parent_path = path.parent / parent_path
    return _deep_merge(_load_yaml_tree(parent_path, seen + (path,)), raw)


def parse_override(text: str) -> tuple[list[str], typing.Any]:
    """`a.b.0.c=value` → (['a','b','0','c'], YAML-parsed value)."""
    if '=' not in text:
        raise ConfigError(f'override {text!r} must look like key.path=value (e.g. scene.loop.batch_size=4)')
    key, raw = text.split('=', 1)
    parts = [p for p in key.strip().split('.') if p]
    if not parts:
        raise ConfigError(f'override {text!r} has an empty key')
    try:
        value = yaml.safe_load(raw) if raw.strip() else ''
    except yaml.YAMLError as exc:
        raise ConfigError(f'override {text!r}: value is not valid YAML ({exc})') from exc
    return parts, value


def apply_override(tree: dict, parts: list[str], value) -> None:
    """Set tree[parts...] = value in place; list items are addressed by index."""
    node = tree
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        here = '.'.join(parts[:i + 1])
        if isinstance(node, list):
            try:
                idx = int(p)
                node[idx]
            except (ValueError, IndexError):
                raise ConfigError(f'override {".".join(parts)}: {here!r} is not an index of a list of '
                                  f'{len(node)} items') from None
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if p not in node:
                raise ConfigError(f'override {".".join(parts)}: no key {here!r}; choose from {sorted(node)}')
            if last:
                node[p] = value
            else:
                node = node[p]
        else:
            raise ConfigError(f'override {".".join(parts)}: {".".join(parts[:i])!r} is a value, not a section')


def load_config(preset: str | None = None, config_file: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Resolve a preset name or a YAML file, then apply `key=value` overrides, into a PipelineConfig."""
    if (preset is None) == (config_file is None):
        raise ConfigError('give exactly one of a preset name (--preset) or a config file (--config)')
    path = _preset_path(preset) if preset is not None else Path(config_file)
    if not path.is_file():
        raise ConfigError(f'config file {path} does not exist')
    tree = _load_yaml_tree(path)
    cfg = from_dict(PipelineConfig, tree, where=path.name)
    if overrides:
        full = to_dict(cfg, all_fields=True)
        for text in overrides:
            apply_override(full, *parse_override(text))
        cfg = from_dict(PipelineConfig, full, where='config after --set')
    validate(cfg)
    return cfg


def validate(cfg: PipelineConfig) -> None:
    """Cross-field checks the types cannot express."""
    problems = []
    loop = cfg.scene.loop
    if loop.batch_size < 1:
        problems.append(f'scene.loop.batch_size must be >= 1, got {loop.batch_size}')
    if loop.checkpoint_every < 1:
        problems.append(f'scene.loop.checkpoint_every must be >= 1, got {loop.checkpoint_every}')
    if not cfg.scene.phases:
        problems.append('scene.phases is empty; list at least one phase (name, steps, lr)')
    for i, p in enumerate(cfg.scene.phases):
        if p.steps < 0:
            problems.append(f'scene.phases.{i}.steps must be >= 0, got {p.steps}')
        if p.lr <= 0:
            problems.append(f'scene.phases.{i}.lr must be > 0, got {p.lr}')
    if cfg.eval.max_depth <= cfg.eval.min_depth:
        problems.append(f'eval depth range {cfg.eval.min_depth}..{cfg.eval.max_depth} is empty')
    if problems:
        raise ConfigError('invalid configuration: ' + '; '.join(problems))


def dump_yaml(cfg) -> str:
    """The resolved configuration as YAML (loadable with --config)."""
    return yaml.safe_dump(to_dict(cfg, all_fields=True), sort_keys=False, default_flow_style=None, width=110)


def preset_description(name: str) -> str:
    tree = _load_yaml_tree(_preset_path(name))
    return str(tree.get('description', ''))
