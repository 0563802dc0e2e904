"""A tiny ONNX model that meets the design §3 contract, with an output tests can predict exactly.

    depth[n, 0, y, x] = offset + gain * image[n, 0, y, x]        (red channel, image in [0, 1])

Input `image` float32 [N,3,H,W] (N dynamic), output `depth` float32 [N,1,H,W], opset 17, built with the
`onnx` helper API only (no torch), with the dynadepth metadata unless `with_metadata=False`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dynadepth_ros.model_format import ModelMetadata

_META_FIELDS = ('dataset', 'config_hash', 'version', 'format')


def make_contract_model(path, height: int = 64, width: int = 192, *, gain: float = 10.0, offset: float = 1.0,
                        metric: bool = True, with_metadata: bool = True, min_depth: float = 0.1,
                        max_depth: float = 100.0, intrinsics=(0.58, 1.92, 0.5, 0.5), stage: str = 'final',
                        **overrides) -> Path:
    """Write the contract model to `path` (atomically) and return it as a Path.

    overrides:
      dataset, config_hash, version, format -- metadata fields (defaults: 'contract-test', 'test', '0.1.0', '1');
      opset (int, default 17); input_name / output_name (default 'image' / 'depth');
      extra_props (dict str->str) -- raw metadata_props set last (overwrites keys, e.g. to make them invalid);
      drop_props (iterable of full keys) -- metadata_props to remove.
    """
    opset = int(overrides.pop('opset', 17))
    in_name = overrides.pop('input_name', 'image')
    out_name = overrides.pop('output_name', 'depth')
    extra_props = dict(overrides.pop('extra_props', {}))
    drop_props = set(overrides.pop('drop_props', ()))
    meta_fields = {'dataset': 'contract-test', 'config_hash': 'test', 'version': '0.1.0'}
    for key in list(overrides):
        if key not in _META_FIELDS:
            raise TypeError(f'make_contract_model: unknown override {key!r}')
        meta_fields[key] = overrides.pop(key)

    inits = [
        numpy_helper.from_array(np.array([0], np.int64), 'starts'),
        numpy_helper.from_array(np.array([1], np.int64), 'ends'),
        numpy_helper.from_array(np.array([1], np.int64), 'axes'),
        numpy_helper.from_array(np.array(gain, np.float32), 'gain'),
        numpy_helper.from_array(np.array(offset, np.float32), 'offset'),
    ]
    nodes = [
        helper.make_node('Slice', [in_name, 'starts', 'ends', 'axes'], ['red']),
        helper.make_node('Mul', ['red', 'gain'], ['scaled']),
        helper.make_node('Add', ['scaled', 'offset'], [out_name]),
    ]
    graph = helper.make_graph(
        nodes, 'dynadepth_contract',
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ['N', 3, height, width])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ['N', 1, height, width])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)],
                              producer_name='dynadepth-contract-test')
    model.ir_version = min(model.ir_version, 9)   # readable by every onnxruntime we support
    onnx.checker.check_model(model)

    props = {}
    if with_metadata:
        meta = ModelMetadata(input_height=height, input_width=width, min_depth=min_depth, max_depth=max_depth,
                             metric=metric, intrinsics=tuple(intrinsics), stage=stage, **meta_fields)
        props = meta.to_props()
    props.update(extra_props)
    for key in drop_props:
        props.pop(key, None)
    for k, v in props.items():
        model.metadata_props.add(key=k, value=str(v))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), suffix='.onnx.tmp')
    os.close(fd)
    onnx.save(model, tmp)
    os.replace(tmp, path)
    return path


def expected_depth(red_u8, gain: float = 10.0, offset: float = 1.0) -> np.ndarray:
    """The contract model's depth for red channel values red_u8 (uint8 array), before any compensation."""
    return (offset + gain * (np.asarray(red_u8, np.float32) / np.float32(255.0))).astype(np.float32)
