"""Typed readers (and the writers' file layout) of the stage outputs design §5 fixes, so later
stages and outside tools read frames, not paths.

    scene/predictions/<split>/<seq>/<frame:06d>.npz      ScenePredictions.frame(...) -> ScenePrediction
    objects/labels/<split>.json                          ObjectLabels(...).frame(seq, frame) -> [InstanceLabel]
    objects/masks/<split>/<seq>/<frame:06d>.npz          ObjectOutputs.masks(...) -> {id: uint8 [3,H,W]}
    objects/object_depth/<split>/<seq>/<frame:06d>.npz   ObjectOutputs.depth(...) -> {id: float32 [H,W]}
    dsa/pseudo_labels/<split>/<seq>/<frame:06d>.npz      PseudoLabels.frame(...) -> PseudoLabel
    masks/ground/predictions/<split>/<seq>/<frame:06d>.png   GroundMaps(...).frame(...) -> float32 [H,W] probability
    masks/seeds/<split>/<seq>/<frame:06d>.png            LabelMaps(...).frame(...) -> uint16 [H,W] seed ids
    masks/instances/<split>/<seq>/<frame:06d>.png        LabelMaps(...).frame(...) -> uint16 [H,W] learned ids

Every file is written atomically (temporary file + rename), so a killed run never leaves a torn
file; a reader that finds no file raises FileNotFoundError naming the stage that writes it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynadepth_ros.atomic_files import atomic_path, write_json_atomic


def frame_key(sequence: str, frame: int) -> str:
    """The key of a frame in label files: "<seq>/<frame:06d>"."""
    return f'{sequence}/{int(frame):06d}'


def parse_frame_key(key: str) -> tuple[str, int]:
    seq, frame = key.rsplit('/', 1)
    return seq, int(frame)


def frame_file(root: Path, split: str, sequence: str, frame: int) -> Path:
    return Path(root) / split / sequence / f'{int(frame):06d}.npz'


def save_npz_atomic(path: str | os.PathLike, compressed: bool = False, **arrays) -> None:
    with atomic_path(path) as tmp, open(tmp, 'xb') as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)


def _load(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist: {what}')
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# ------------------------------------------------------------------------------------- stage 1


@dataclass(frozen=True)
class ScenePrediction:
    depth: np.ndarray       # float32 [H,W] metres (when the stage is metric)
    flow_prev: np.ndarray   # float32 [2,H,W] residual object flow (px) towards frame t-gap, reference grid
    flow_next: np.ndarray   # float32 [2,H,W] ... towards frame t+gap

    def flow_magnitude(self) -> np.ndarray:
        """float32 [H,W]: (Σ_c |flow_prev| + Σ_c |flow_next|) / 2, the reference's per-pixel motion measure."""
        return (np.abs(self.flow_prev).sum(0) + np.abs(self.flow_next).sum(0)) / 2


class ScenePredictions:
    """Stage-1 per-frame predictions under <run>/scene/predictions/."""

    def __init__(self, scene_dir: str | os.PathLike):
        self.root = Path(scene_dir) / 'predictions'

    def path(self, split: str, sequence: str, frame: int) -> Path:
        return frame_file(self.root, split, sequence, frame)

    def frame(self, split: str, sequence: str, frame: int) -> ScenePrediction:
        z = _load(self.path(split, sequence, frame), 'stage 1 (python -m training scene) writes it')
        return ScenePrediction(depth=z['depth'].astype(np.float32), flow_prev=z['flow_prev'].astype(np.float32),
                               flow_next=z['flow_next'].astype(np.float32))


# ------------------------------------------------------------------------------------- stage 2


@dataclass(frozen=True)
class InstanceLabel:
    id: int
    label: str             # 'static' | 'dynamic'
    area: int              # pixels at the network resolution (road removed)
    extra: dict            # the cues the rule looked at (flow coverage, ground ratio, ...), for inspection

    @property
    def dynamic(self) -> bool:
        return self.label == 'dynamic'

    def to_json(self) -> dict:
        return {'id': int(self.id), 'label': self.label, 'area': int(self.area), **self.extra}

    @classmethod
    def from_json(cls, d: dict) -> InstanceLabel:
        extra = {k: v for k, v in d.items() if k not in ('id', 'label', 'area')}
        return cls(int(d['id']), str(d['label']), int(d['area']), extra)


class ObjectLabels:
    """objects/labels/<split>.json: {"<seq>/<frame:06d>": [{"id", "label", "area", ...}, ...]}."""

    def __init__(self, objects_dir: str | os.PathLike, split: str):
        self.path = Path(objects_dir) / 'labels' / f'{split}.json'
        if not self.path.is_file():
            raise FileNotFoundError(f'{self.path} does not exist: stage 2 (python -m training objects) writes it')
        raw = json.loads(self.path.read_text())
        self.frames: dict[str, list[InstanceLabel]] = {k: [InstanceLabel.from_json(d) for d in v]
                                                       for k, v in raw.items()}

    def frame(self, sequence: str, frame: int) -> list[InstanceLabel]:
        return self.frames.get(frame_key(sequence, frame), [])

    def items(self):
        for key, labels in self.frames.items():
            seq, t = parse_frame_key(key)
            yield seq, t, labels

    @staticmethod
    def write(objects_dir: str | os.PathLike, split: str, frames: dict[str, list[InstanceLabel]]) -> Path:
        path = Path(objects_dir) / 'labels' / f'{split}.json'
        write_json_atomic(path, {k: [lab.to_json() for lab in v] for k, v in sorted(frames.items())})
        return path


class ObjectOutputs:
    """Stage-2 per-frame arrays: mask triplets of the instances with correspondences, object depth."""

    MASKS, DEPTH = 'masks', 'object_depth'

    def __init__(self, objects_dir: str | os.PathLike):
        self.dir = Path(objects_dir)

    def masks_path(self, split: str, sequence: str, frame: int) -> Path:
        return frame_file(self.dir / self.MASKS, split, sequence, frame)

    def depth_path(self, split: str, sequence: str, frame: int) -> Path:
        return frame_file(self.dir / self.DEPTH, split, sequence, frame)

    def masks(self, split: str, sequence: str, frame: int) -> dict[int, np.ndarray]:
        """{instance id: uint8 [3,H,W] masks in frames t-gap, t, t+gap} ({} when the frame has none)."""
        p = self.masks_path(split, sequence, frame)
        if not p.is_file():
            return {}
        z = _load(p, 'stage 2 writes it')
        return {int(i): m for i, m in zip(z['ids'], z['masks'])}

    def depth(self, split: str, sequence: str, frame: int) -> dict[int, np.ndarray]:
        """{instance id: float32 [H,W] object-network depth inside the instance's mask, 0 outside}."""
        p = self.depth_path(split, sequence, frame)
        if not p.is_file():
            return {}
        z = _load(p, 'stage 2 writes it')
        return {int(i): d.astype(np.float32) for i, d in zip(z['ids'], z['depth'])}

    def write_masks(self, split: str, sequence: str, frame: int, masks: dict[int, np.ndarray]) -> None:
        ids = np.array(sorted(masks), np.int32)
        stack = np.stack([masks[i] for i in ids]).astype(np.uint8) if len(ids) else np.zeros((0, 3, 1, 1), np.uint8)
        save_npz_atomic(self.masks_path(split, sequence, frame), compressed=True, ids=ids, masks=stack)

    def write_depth(self, split: str, sequence: str, frame: int, depth: dict[int, np.ndarray]) -> None:
        ids = np.array(sorted(depth), np.int32)
        stack = np.stack([depth[i] for i in ids]).astype(np.float16) if len(ids) else np.zeros((0, 1, 1), np.float16)
        save_npz_atomic(self.depth_path(split, sequence, frame), compressed=True, ids=ids, depth=stack)


# ------------------------------------------------------------------------------------- stage 3


@dataclass(frozen=True)
class PseudoLabel:
    depth: np.ndarray     # float32 [H,W] metres: scene depth, dynamic objects replaced by β·object depth
    dynamic: np.ndarray   # bool [H,W]: the pixels that came from a dynamic object


class PseudoLabels:
    """dsa/pseudo_labels/<split>/<seq>/<frame:06d>.npz (design §5)."""

    def __init__(self, dsa_dir: str | os.PathLike):
        self.root = Path(dsa_dir) / 'pseudo_labels'

    def path(self, split: str, sequence: str, frame: int) -> Path:
        return frame_file(self.root, split, sequence, frame)

    def frame(self, split: str, sequence: str, frame: int) -> PseudoLabel:
        z = _load(self.path(split, sequence, frame), 'stage 3 (python -m training dsa) writes it')
        return PseudoLabel(depth=z['depth'].astype(np.float32), dynamic=z['dynamic'].astype(bool))

    def write(self, split: str, sequence: str, frame: int, label: PseudoLabel) -> None:
        save_npz_atomic(self.path(split, sequence, frame), depth=label.depth.astype(np.float32),
                        dynamic=label.dynamic.astype(bool))


# ------------------------------------------------------------------------------------- learned masks


def _write_png(path: Path, image: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode('.png', image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f'could not encode {path}')
    from dynadepth_ros.atomic_files import write_bytes_atomic
    write_bytes_atomic(path, buf.tobytes())


def _read_png(path: Path, what: str) -> np.ndarray:
    import cv2

    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist: {what}')
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f'{path} is not a readable PNG; rerun the stage that writes it ({what})')
    return img


def learned_masks_root(cfg, run_dir: str | os.PathLike) -> Path | None:
    """Where the stages after the learned-mask stages read instance masks: the run's masks/instances with
    objects.masks: learned, else None (the data's own masks). The one switch stages 2-3 and their
    evaluations pass to training.data.build_dataset(masks=...)."""
    from training.stages import learned_masks, stage_dir

    return stage_dir(run_dir, 'instances') if learned_masks(cfg) else None


class LabelMaps:
    """Per-frame instance id maps as 16-bit PNGs under `root`/<split>/<seq>/<frame:06d>.png (0 = none, the
    meaning of a dataset's mask/): the seeds (masks/seeds) and the learned masks (masks/instances, design §5)."""

    def __init__(self, root: str | os.PathLike, writer: str = 'the mask stages'):
        self.root = Path(root)
        self.writer = writer

    def path(self, split: str, sequence: str, frame: int) -> Path:
        return Path(self.root) / split / sequence / f'{int(frame):06d}.png'

    def exists(self, split: str, sequence: str, frame: int) -> bool:
        return self.path(split, sequence, frame).is_file()

    def frame(self, split: str, sequence: str, frame: int) -> np.ndarray:
        """uint16 [H,W] instance ids (network resolution)."""
        return _read_png(self.path(split, sequence, frame), f'{self.writer} write it').astype(np.uint16)

    def write(self, split: str, sequence: str, frame: int, ids: np.ndarray) -> None:
        _write_png(self.path(split, sequence, frame), np.asarray(ids).astype(np.uint16))


class GroundMaps:
    """masks/ground/predictions/<split>/<seq>/<frame:06d>.png: the ground network's probability, 8-bit."""

    def __init__(self, ground_dir: str | os.PathLike):
        self.root = Path(ground_dir) / 'predictions'

    def path(self, split: str, sequence: str, frame: int) -> Path:
        return self.root / split / sequence / f'{int(frame):06d}.png'

    def frame(self, split: str, sequence: str, frame: int) -> np.ndarray:
        """float32 [H,W] ground probability in [0,1]."""
        img = _read_png(self.path(split, sequence, frame), 'the ground stage (python -m training ground) writes it')
        return img.astype(np.float32) / 255.0

    def write(self, split: str, sequence: str, frame: int, probability: np.ndarray) -> None:
        _write_png(self.path(split, sequence, frame),
                   np.clip(np.rint(np.asarray(probability, np.float32) * 255.0), 0, 255).astype(np.uint8))
