"""The learned instance-segmentation model's contract and the decoding of its outputs (numpy + OpenCV; no
torch), so the node and the tools can run the exported `instances.onnx` of a run on recordings without masks.

ONNX graph (written by training/stages/mask_instances.py):

    inputs   image  float32 [N,3,H,W] RGB in [0,1]
             depth  float32 [N,1,H,W] depth of any depth model (metres or relative: only 1/depth divided by
                    its per-image maximum enters the network)
    outputs  foreground float32 [N,1,H,W] probability that a pixel belongs to an object
             centre     float32 [N,1,H,W] object-centre heat map in [0,1] (an object's score is its peak)
             offset     float32 [N,2,H,W] (dx, dy) pixels from each pixel to its object's centre
             ground     float32 [N,1,H,W] ground probability (the ground network inside the graph)

metadata_props: the design §3 keys that apply (dynadepth.format, input_height, input_width, stage =
`instances`, dataset, config_hash, version) plus dynadepth.kind = `instances`, dynadepth.inputs /
dynadepth.outputs (comma-separated names) and the decoding settings the run used
(dynadepth.score_threshold, foreground_threshold, centre_kernel, min_area_fraction).

`decode_instances` turns one image's outputs into an id map: centres are the local maxima of the heat map
(centre_kernel x centre_kernel) at or above score_threshold; every foreground pixel joins the centre nearest
to where its offset points; instances smaller than min_area pixels are dropped; ids 1..n by score.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dynadepth_ros.model_format import FORMAT_VERSION, PREFIX, ModelFormatError

KIND = 'instances'
INPUTS = ('image', 'depth')
OUTPUTS = ('foreground', 'centre', 'offset', 'ground')


@dataclass(frozen=True)
class InstanceModelMetadata:
    input_height: int
    input_width: int
    dataset: str
    config_hash: str
    version: str
    score_threshold: float = 0.5
    foreground_threshold: float = 0.5
    centre_kernel: int = 5
    min_area_fraction: float = 0.001
    format: str = FORMAT_VERSION
    stage: str = KIND

    def to_props(self) -> dict[str, str]:
        vals = {'format': self.format, 'kind': KIND, 'stage': self.stage,
                'input_height': str(int(self.input_height)), 'input_width': str(int(self.input_width)),
                'inputs': ','.join(INPUTS), 'outputs': ','.join(OUTPUTS), 'dataset': self.dataset,
                'config_hash': self.config_hash, 'version': self.version,
                'score_threshold': repr(float(self.score_threshold)),
                'foreground_threshold': repr(float(self.foreground_threshold)),
                'centre_kernel': str(int(self.centre_kernel)),
                'min_area_fraction': repr(float(self.min_area_fraction))}
        return {PREFIX + k: v for k, v in vals.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = 'model') -> InstanceModelMetadata:
        if props.get(PREFIX + 'kind') != KIND:
            raise ModelFormatError(f'{source} is not an instance-segmentation model (dynadepth.kind is '
                                   f'{props.get(PREFIX + "kind")!r}, expected {KIND!r}); it is made by the '
                                   f'`instances` stage of `python -m training run` with objects.masks: learned')
        try:
            return cls(input_height=int(props[PREFIX + 'input_height']), input_width=int(props[PREFIX + 'input_width']),
                       dataset=props.get(PREFIX + 'dataset', ''), config_hash=props.get(PREFIX + 'config_hash', ''),
                       version=props.get(PREFIX + 'version', ''),
                       score_threshold=float(props[PREFIX + 'score_threshold']),
                       foreground_threshold=float(props[PREFIX + 'foreground_threshold']),
                       centre_kernel=int(props[PREFIX + 'centre_kernel']),
                       min_area_fraction=float(props[PREFIX + 'min_area_fraction']),
                       format=props.get(PREFIX + 'format', ''), stage=props.get(PREFIX + 'stage', KIND))
        except (KeyError, ValueError) as exc:
            raise ModelFormatError(f'{source}: instance-model metadata incomplete or malformed ({exc}); re-export '
                                   f'it with the instances stage') from exc

    def min_area(self) -> int:
        return max(1, int(np.ceil(self.min_area_fraction * self.input_height * self.input_width)))


def read_instance_metadata(path: str | Path) -> InstanceModelMetadata:
    """The metadata of an exported instance model, its inputs and outputs checked."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f'instance model {path} does not exist')
    model = onnx.load(str(path), load_external_data=False)
    meta = InstanceModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))
    inputs = tuple(i.name for i in model.graph.input)
    outputs = tuple(o.name for o in model.graph.output)
    if inputs != INPUTS or outputs != OUTPUTS:
        raise ModelFormatError(f'{path}: expects inputs {INPUTS} and outputs {OUTPUTS}, found {inputs} and {outputs}')
    return meta


def centre_peaks(centre: np.ndarray, score_threshold: float, kernel: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(points int [K,2] as (x, y), scores float [K]) of the local maxima of a heat map [H,W] at or above
    score_threshold, highest first; a plateau counts once."""
    heat = np.nan_to_num(np.asarray(centre, np.float32))
    peak = (heat >= score_threshold) & (heat >= cv2.dilate(heat, np.ones((kernel, kernel), np.uint8)))
    if not peak.any():
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    n, lab = cv2.connectedComponents(peak.astype(np.uint8), connectivity=8)
    pts, scores = [], []
    ys, xs = np.nonzero(peak)
    comp = lab[ys, xs]
    for c in range(1, n):
        sel = comp == c
        k = int(np.argmax(heat[ys[sel], xs[sel]]))
        pts.append((int(xs[sel][k]), int(ys[sel][k])))
        scores.append(float(heat[ys[sel][k], xs[sel][k]]))
    order = np.argsort(-np.asarray(scores), kind='stable')
    return np.asarray(pts, np.int64)[order], np.asarray(scores, np.float32)[order]


def decode_instances(foreground: np.ndarray, centre: np.ndarray, offset: np.ndarray, *, score_threshold: float = 0.5,
                     foreground_threshold: float = 0.5, centre_kernel: int = 5, min_area: int = 1,
                     max_instances: int = 64) -> tuple[np.ndarray, list[float]]:
    """(uint16 [H,W] instance ids 1..n, 0 = none; their scores) of one image's network outputs:
    foreground [H,W] probability, centre [H,W] heat, offset [2,H,W] (dx, dy) pixels (module docstring); at most
    max_instances centres, the highest-scoring."""
    fg = np.asarray(foreground, np.float32) >= foreground_threshold
    h, w = fg.shape
    ids = np.zeros((h, w), np.uint16)
    pts, scores = centre_peaks(centre, score_threshold, centre_kernel)
    pts, scores = pts[:max_instances], scores[:max_instances]       # the highest-scoring centres
    if not len(pts) or not fg.any():
        return ids, []
    ys, xs = np.nonzero(fg)
    off = np.asarray(offset, np.float32)
    tx = xs + off[0, ys, xs]
    ty = ys + off[1, ys, xs]
    d2 = (tx[:, None] - pts[None, :, 0]) ** 2 + (ty[:, None] - pts[None, :, 1]) ** 2
    owner = np.argmin(d2, axis=1)
    counts = np.bincount(owner, minlength=len(pts))
    keep = np.flatnonzero(counts >= max(1, min_area))
    new_id = np.zeros(len(pts), np.uint16)
    new_id[keep] = np.arange(1, len(keep) + 1, dtype=np.uint16)
    ids[ys, xs] = new_id[owner]
    return ids, [float(scores[k]) for k in keep]
