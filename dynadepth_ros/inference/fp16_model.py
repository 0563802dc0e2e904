"""The fp16 copy of an exported model that a strongly typed TensorRT network is built from.

TensorRT 11 removed `BuilderFlag.FP16` and `Builder.platform_has_fast_fp16` (TensorRT 10.12 deprecated them
together with weak typing): every network is strongly typed and the precision comes from the model's own
tensor types. TensorRT's migration guide ("Migrating Python Code from TensorRT 10.x to 11.x: Migrating from
Weak Typing to Strong Typing") prescribes converting the fp32 ONNX with ModelOpt AutoCast before the build:

    modelopt.onnx.autocast.convert_to_mixed_precision(onnx_path=..., low_precision_type='fp16', keep_io_types=True)

`nvidia-modelopt` needs torch >= 2.8 and pins its own onnx / onnxruntime-gpu, which a robot's install (a
JetPack onnxruntime wheel, no torch) should not have to take, so AutoCast is used when it is importable and
otherwise onnxconverter-common's float16 converter (`convert_float_to_float16(keep_io_types=True)`, part of
the `tensorrt` extra). Both keep the design §3 I/O: input `image` and output `depth` stay float32 and the
metadata is kept; everything in between becomes float16.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from dynadepth_ros.atomic_files import atomic_path
from dynadepth_ros.inference.backend import BackendError

AUTOCAST = 'ModelOpt AutoCast'
ONNXCONVERTER = 'onnxconverter-common float16'
INSTALL_HINT = ("pip install 'onnxconverter-common>=1.16,<2' (part of `pip install .[tensorrt]`), or TensorRT's "
                "prescribed ModelOpt AutoCast (pip install 'nvidia-modelopt[onnx]')")


def fp16_converter() -> str | None:
    """The converter write_fp16_model would use here (AUTOCAST or ONNXCONVERTER), None when neither is installed."""
    import importlib.util
    for module, name in (('modelopt.onnx.autocast', AUTOCAST), ('onnxconverter_common', ONNXCONVERTER)):
        try:
            if importlib.util.find_spec(module) is not None:
                return name
        except (ImportError, ValueError):      # a parent package that is missing or broken
            continue
    return None


def write_fp16_model(src: str | Path, dst: str | Path) -> str:
    """Write the fp16 copy of the fp32 model `src` to `dst` (atomically); returns the converter used.

    Raises BackendError naming what to install when no converter is there, or why the conversion failed.
    """
    import onnx

    tool = fp16_converter()
    if tool is None:
        raise BackendError(f'an fp16 engine on this TensorRT needs an fp16 ONNX model and no converter is installed: '
                           f'{INSTALL_HINT}; or use precision:=fp32')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')     # onnxconverter-common warns once per tiny weight it rounds to 1e-7
            if tool == AUTOCAST:
                from modelopt.onnx.autocast import convert_to_mixed_precision
                model = convert_to_mixed_precision(onnx_path=str(src), low_precision_type='fp16', keep_io_types=True)
            else:
                from onnxconverter_common import float16
                model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        with atomic_path(dst) as tmp:
            onnx.save(model, str(tmp))
    except Exception as exc:
        raise BackendError(f'{tool} could not convert {src} to fp16 ({type(exc).__name__}: {exc}); '
                           f'use precision:=fp32') from exc
    return tool
