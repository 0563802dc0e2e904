"""Stand-ins for TensorRT on a machine without a GPU (this project has none; TensorRT has never run here).

1. `FakeGPU`: a `tensorrt` module and a cuda-python `cuda.bindings.runtime` module, put into sys.modules so
   that the production `TensorRTRuntime` itself runs: its version checks, builder calls, fp16 route, engine
   checks, device buffers and error handling. Each TensorRT version has the names the real bindings of that
   version have where this backend touches them: 10.x has `BuilderFlag.FP16` and
   `Builder.platform_has_fast_fp16` (deprecated from 10.12 on, where this stand-in records a weakly typed build
   as deprecated), 11.x has neither and every network is strongly typed (the precision comes from the model's
   tensor types). It fails the ways real installs fail: `trt.Builder` / `trt.Runtime` / `trt.OnnxParser`
   raising `TypeError: pybind11::init(): factory function returned nullptr` after TensorRT logged why, a
   cuda-python built for a newer CUDA than the driver (`cudaErrorInsufficientDriver`, names returned as bytes
   as cuda-python does), a failing second cudaMalloc, names missing in a version. An "engine" is the ONNX
   model with what the build asked for (profile, typing, fp16 flag); "executing" it runs the ONNX with ONNX
   Runtime CPU on bytes copied in and out of fake device buffers, which are bounds-checked (an engine writing
   past its output buffer is recorded and fails, as a real one would corrupt memory). It is not TensorRT: it
   says nothing about TensorRT's numerics, speed or kernels.

2. `SlowBuildRuntime`: the simpler SubstituteRuntime of test_inference_backends (it replaces TensorRTRuntime
   as a whole), whose engine build takes $DYNADEPTH_TEST_TRT_BUILD_S seconds (sleeping, so with the GIL
   released like TensorRT's build_serialized_network).

Run as `python test/trt_substitute.py --ros-args ...` (any depth_node arguments): a depth_node whose TensorRT
is FakeGPU(**json $DYNADEPTH_TEST_FAKE_TRT) when that variable is set, else SlowBuildRuntime.
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import json
import os
import sys
import time
import types
from enum import IntEnum

import numpy as np

from test_inference_backends import SubstituteRuntime

NULLPTR = 'pybind11::init(): factory function returned nullptr'


def _version(text: str) -> tuple[int, int]:
    major, minor = (str(text).split('.') + ['0'])[:2]
    return int(major), int(minor)


class FakeGPU:
    """A stand-in TensorRT `version` and cuda-python `cuda_python` on a GPU of compute capability `cc` whose
    driver supports CUDA `driver_cuda` (cudaDriverGetVersion's int, 12020 = 12.2).

    fail: names of TensorRT constructors that raise TypeError(NULLPTR) ('Builder', 'Runtime', 'OnnxParser');
    malloc_fail_at: the n-th cudaMalloc (1-based) returns cudaErrorMemoryAllocation;
    missing: attribute names to remove from the stand-in engine (a name a version lacks), e.g.
      'get_tensor_profile_shape'.
    Records: `builds` (one dict per engine build), `mallocs` (cudaMalloc calls), `live` (device buffers not
    freed), `overflows` (engine writes past a buffer).
    """

    def __init__(self, version: str = '10.3.0', *, cuda_python: str = '12.6.0', driver_cuda: int = 12060,
                 cc: tuple[int, int] = (8, 7), fail=(), malloc_fail_at: int | None = None, missing=()):
        self.version, self.cuda_python, self.driver_cuda, self.cc = version, cuda_python, int(driver_cuda), cc
        self.fail, self.malloc_fail_at, self.missing = set(fail), malloc_fail_at, set(missing)
        self.builds: list[dict] = []
        self.mallocs = 0
        self.overflows = 0
        self.memory: dict[int, bytearray] = {}
        self._next_ptr = 0x1000
        self.trt = self._tensorrt()
        self.cudart = self._cudart()

    @property
    def live(self) -> int:
        return len(self.memory)

    # ------------------------------------------------------------------ sys.modules
    def modules(self) -> dict[str, types.ModuleType]:
        cuda = types.ModuleType('cuda')
        bindings = types.ModuleType('cuda.bindings')
        bindings.runtime = self.cudart
        bindings.__version__ = self.cuda_python
        cuda.bindings = bindings
        mods = {'tensorrt': self.trt, 'cuda': cuda, 'cuda.bindings': bindings, 'cuda.bindings.runtime': self.cudart}
        for name, mod in mods.items():
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        return mods

    def install(self, monkeypatch) -> 'FakeGPU':
        """Put the stand-ins into sys.modules for one test (pytest's monkeypatch undoes it)."""
        for name, mod in self.modules().items():
            monkeypatch.setitem(sys.modules, name, mod)
        return self

    # ------------------------------------------------------------------ cuda-python runtime
    def _cudart(self) -> types.ModuleType:
        gpu = self
        rt = types.ModuleType('cuda.bindings.runtime')
        rt.__version__ = self.cuda_python

        class cudaError_t(IntEnum):
            cudaSuccess = 0
            cudaErrorMemoryAllocation = 2
            cudaErrorInsufficientDriver = 35
            cudaErrorInvalidValue = 1
            cudaErrorIllegalAddress = 700

        class cudaMemcpyKind(IntEnum):
            cudaMemcpyHostToDevice = 1
            cudaMemcpyDeviceToHost = 2

        ok = cudaError_t.cudaSuccess
        rt.cudaError_t, rt.cudaMemcpyKind = cudaError_t, cudaMemcpyKind

        def driver_too_old() -> bool:
            return _version(gpu.cuda_python)[0] > gpu.driver_cuda // 1000

        rt.cudaGetErrorName = lambda err: (ok, cudaError_t(int(err)).name.encode())
        rt.cudaDriverGetVersion = lambda: (ok, gpu.driver_cuda)
        rt.cudaSetDevice = lambda device: (cudaError_t.cudaErrorInsufficientDriver if driver_too_old() else ok,)
        rt.cudaGetDeviceProperties = lambda device: (ok, types.SimpleNamespace(major=gpu.cc[0], minor=gpu.cc[1]))
        rt.cudaStreamCreate = lambda: (ok, 7)
        rt.cudaStreamSynchronize = lambda stream: (ok,)
        rt.cudaStreamDestroy = lambda stream: (ok,)

        def cudaMalloc(size):
            gpu.mallocs += 1
            if gpu.mallocs == gpu.malloc_fail_at:
                return cudaError_t.cudaErrorMemoryAllocation, 0
            ptr, gpu._next_ptr = gpu._next_ptr, gpu._next_ptr + 0x1000 + int(size)
            gpu.memory[ptr] = bytearray(int(size))
            return ok, ptr

        def cudaFree(ptr):
            return (ok,) if gpu.memory.pop(int(ptr), None) is not None else (cudaError_t.cudaErrorInvalidValue,)

        def cudaMemcpyAsync(dst, src, size, kind, stream):
            device = int(dst) if kind == cudaMemcpyKind.cudaMemcpyHostToDevice else int(src)
            buf = gpu.memory.get(device)
            if buf is None or size > len(buf):
                return (cudaError_t.cudaErrorInvalidValue,)
            addr = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
            if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
                ctypes.memmove(addr, int(src), int(size))
            else:
                ctypes.memmove(int(dst), addr, int(size))
            return (ok,)

        rt.cudaMalloc, rt.cudaFree, rt.cudaMemcpyAsync = cudaMalloc, cudaFree, cudaMemcpyAsync
        return rt

    # ------------------------------------------------------------------ tensorrt
    def _tensorrt(self) -> types.ModuleType:
        gpu = self
        trt = types.ModuleType('tensorrt')
        trt.__version__ = self.version
        v11 = _version(self.version) >= (11, 0)
        deprecated_weak = _version(self.version) >= (10, 12)

        class Severity(IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        class ILogger:
            def __init__(self):
                pass

        ILogger.Severity = Severity

        class DataType(IntEnum):
            FLOAT = 0
            HALF = 1

        class TensorIOMode(IntEnum):
            NONE = 0
            INPUT = 1
            OUTPUT = 2

        class MemoryPoolType(IntEnum):
            WORKSPACE = 0

        flags = {'INT8': 1, 'DEBUG': 2, 'GPU_FALLBACK': 3, 'REFIT': 5, 'TF32': 7}
        if not v11:
            flags['FP16'] = 0
        BuilderFlag = IntEnum('BuilderFlag', flags)
        NetworkDefinitionCreationFlag = IntEnum('NetworkDefinitionCreationFlag',
                                                {'STRONGLY_TYPED': 1} if v11 else {'EXPLICIT_BATCH': 0,
                                                                                  'STRONGLY_TYPED': 1})
        trt.ILogger, trt.DataType, trt.TensorIOMode = ILogger, DataType, TensorIOMode
        trt.MemoryPoolType = MemoryPoolType
        trt.BuilderFlag, trt.NetworkDefinitionCreationFlag = BuilderFlag, NetworkDefinitionCreationFlag
        trt.nptype = lambda dt: {DataType.FLOAT: np.float32, DataType.HALF: np.float16}[DataType(int(dt))]

        def refuse(what, logger):
            if what in gpu.fail:
                logger.log(Severity.ERROR, 'CUDA initialization failure with error: 35. Please check your CUDA '
                                           'installation: http://docs.nvidia.com/cuda/cuda-installation-guide-linux/')
                raise TypeError(NULLPTR)

        class Network:
            def __init__(self, strongly_typed):
                self.strongly_typed, self.onnx = strongly_typed, None

        class OnnxParser:
            def __init__(self, network, logger):
                refuse('OnnxParser', logger)
                self.network, self.errors = network, []

            def parse_from_file(self, path):
                import onnx

                from dynadepth_ros.model_format import graph_precision
                try:
                    model = onnx.load(path)
                except Exception as exc:
                    self.errors.append(f'ModelImporter: {exc}')
                    return False
                layout = graph_precision(model)[1]
                if layout and layout != 'qdq-symmetric':    # TensorRT's Q/DQ: int8, zero point 0, no QLinear ops
                    self.errors.append(f'ModelImporter: unsupported quantization ({layout}): TensorRT only supports '
                                       f'symmetric INT8 QuantizeLinear/DequantizeLinear (zero point 0)')
                    return False
                with open(path, 'rb') as f:
                    self.network.onnx = f.read()
                return True

            @property
            def num_errors(self):
                return len(self.errors)

            def get_error(self, i):
                return self.errors[i]

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = [list(lo), list(opt), list(hi)]

        class Config:
            def __init__(self):
                self.flags, self.profiles, self.pools = set(), [], {}

            def set_memory_pool_limit(self, pool, size):
                self.pools[MemoryPoolType(pool)] = size

            def set_flag(self, flag):
                self.flags.add(BuilderFlag(flag))

            def add_optimization_profile(self, profile):
                self.profiles.append(profile)
                return len(self.profiles) - 1

        class Builder:
            def __init__(self, logger):
                refuse('Builder', logger)
                self.logger = logger

            def create_network(self, flags=0):
                return Network(v11 or bool(int(flags) & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED))))

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                import onnx
                fp16_flag = 'FP16' in BuilderFlag.__members__ and BuilderFlag['FP16'] in config.flags
                if network.strongly_typed and fp16_flag:
                    self.logger.log(Severity.ERROR, 'BuilderFlag::kFP16 is not allowed with a strongly typed network')
                    return None
                model = onnx.load_from_string(network.onnx)
                fp16_types = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
                int8_flag = BuilderFlag['INT8'] in config.flags
                qdq = any(n.op_type == 'QuantizeLinear' for n in model.graph.node)
                # explicit quantization: Q/DQ layers run int8 on a strongly typed network, on a weakly typed one
                # only with BuilderFlag.INT8 (the stand-in then computes them as the ONNX says, like the others)
                computes = ('int8' if qdq and (network.strongly_typed or int8_flag) else
                            'fp16' if fp16_flag or (network.strongly_typed and fp16_types) else 'fp32')
                record = {'strongly_typed': network.strongly_typed, 'fp16_flag': fp16_flag, 'int8_flag': int8_flag,
                          'computes': computes,
                          'deprecated_weak_typing': deprecated_weak and not network.strongly_typed,
                          'profile': config.profiles[0].shapes['image'], 'version': gpu.version}
                gpu.builds.append(record)
                head = json.dumps(record).encode()
                return b'FAKETRT' + len(head).to_bytes(4, 'little') + head + network.onnx

        if not v11:
            Builder.platform_has_fast_fp16 = property(lambda self: True)

        class Engine:
            def __init__(self, head, onnx_bytes):
                import onnxruntime as ort
                self.head = head
                self.sess = ort.InferenceSession(onnx_bytes, providers=['CPUExecutionProvider'])
                self.io = {t.name: (TensorIOMode.INPUT, t) for t in self.sess.get_inputs()}
                self.io.update({t.name: (TensorIOMode.OUTPUT, t) for t in self.sess.get_outputs()})
                self.num_io_tensors = len(self.io)

            def get_tensor_name(self, i):
                return list(self.io)[i]

            def get_tensor_mode(self, name):
                return self.io[name][0]

            def get_tensor_dtype(self, name):
                return DataType.HALF if self.io[name][1].type == 'tensor(float16)' else DataType.FLOAT

            def get_tensor_shape(self, name):
                return [d if isinstance(d, int) else -1 for d in self.io[name][1].shape]

            def get_tensor_profile_shape(self, name, index):
                return self.head['profile']

            def create_execution_context(self):
                return Context(self)

        for name in gpu.missing:
            delattr(Engine, name)

        class Context:
            def __init__(self, engine):
                self.engine, self.shapes, self.addresses = engine, {}, {}

            def set_input_shape(self, name, shape):
                lo, _, hi = self.engine.head['profile']
                if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                    return False
                self.shapes[name] = tuple(shape)
                return True

            def set_tensor_address(self, name, ptr):
                self.addresses[name] = int(ptr)

            def get_tensor_shape(self, name):
                x = self.shapes['image']
                return [x[0] if d == -1 else d for d in self.engine.get_tensor_shape(name)]

            def execute_async_v3(self, stream_handle):
                eng = self.engine
                x_type = trt.nptype(eng.get_tensor_dtype('image'))
                shape = self.shapes['image']
                x_buf = gpu.memory[self.addresses['image']]
                x = np.frombuffer(bytes(x_buf[:int(np.prod(shape)) * np.dtype(x_type).itemsize]), x_type)
                out = eng.sess.run(['depth'], {'image': x.reshape(shape)})[0]
                out = np.ascontiguousarray(out, trt.nptype(eng.get_tensor_dtype('depth')))
                if eng.head['fp16_flag']:
                    out = out.astype(np.float16).astype(out.dtype)     # fp16 compute, fp32 I/O
                y_buf = gpu.memory[self.addresses['depth']]
                if out.nbytes > len(y_buf):
                    gpu.overflows += 1                  # a real GPU would corrupt memory here
                    return False
                y_buf[:out.nbytes] = out.tobytes()
                return True

        class Runtime:
            def __init__(self, logger):
                refuse('Runtime', logger)
                self.logger = logger

            def deserialize_cuda_engine(self, blob):
                blob = bytes(blob)
                if not blob.startswith(b'FAKETRT'):
                    self.logger.log(Severity.ERROR, 'Serialization assertion failed: magic tag does not match')
                    return None
                n = int.from_bytes(blob[7:11], 'little')
                head = json.loads(blob[11:11 + n])
                if head['version'] != gpu.version:
                    self.logger.log(Severity.ERROR, f'engine built with TensorRT {head["version"]}')
                    return None
                return Engine(head, blob[11 + n:])

        trt.Builder, trt.Runtime, trt.OnnxParser = Builder, Runtime, OnnxParser
        return trt


class SlowBuildRuntime(SubstituteRuntime):
    """SubstituteRuntime whose build() takes build_s seconds."""

    def __init__(self, device_id=0, build_s=None):
        super().__init__()
        self.build_s = float(os.environ.get('DYNADEPTH_TEST_TRT_BUILD_S', '5') if build_s is None else build_s)

    def build(self, *args, **kwargs):
        time.sleep(self.build_s)
        return super().build(*args, **kwargs)


def command():
    """The argv that starts this substitute depth_node (append `--ros-args ...`)."""
    return [sys.executable, os.path.abspath(__file__)]


if __name__ == '__main__':
    fake = os.environ.get('DYNADEPTH_TEST_FAKE_TRT')
    if fake:
        sys.modules.update(FakeGPU(**json.loads(fake)).modules())
    else:
        from dynadepth_ros.inference import tensorrt_backend
        tensorrt_backend.TensorRTRuntime = SlowBuildRuntime  # what TensorRTBackend instantiates without a runtime
    from dynadepth_ros.node import main
    raise SystemExit(main())
