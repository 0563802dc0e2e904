"""ONNX Runtime backend: TensorRT / CUDA execution providers when this onnxruntime build has them, else CPU.

Only the CPU provider runs on the project's machines; the GPU providers are configured from ONNX Runtime's
documented provider options (TensorRT EP: trt_fp16_enable, trt_engine_cache_enable, trt_engine_cache_path,
trt_timing_cache_enable; CUDA EP: device_id) and are verified against the CPU provider at start-up by
backend_selection before they go live.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dynadepth_ros.inference.backend import BackendError
from dynadepth_ros.model_format import INPUT_NAME, OUTPUT_NAME, ModelMetadata

TENSORRT_EP = 'TensorrtExecutionProvider'
CUDA_EP = 'CUDAExecutionProvider'
CPU_EP = 'CPUExecutionProvider'
PROVIDER_PREFERENCE = (TENSORRT_EP, CUDA_EP, CPU_EP)


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers (e.g. ['CPUExecutionProvider'])."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def best_provider(available: list[str] | None = None) -> str:
    """The preferred provider among `available`: TensorRT EP > CUDA EP > CPU."""
    available = available_providers() if available is None else available
    for p in PROVIDER_PREFERENCE:
        if p in available:
            return p
    raise BackendError(f'onnxruntime offers none of {PROVIDER_PREFERENCE} (has {available}); reinstall onnxruntime')


class OnnxRuntimeBackend:
    """One onnxruntime InferenceSession on `provider` (with CUDA/CPU behind a GPU provider for unsupported ops)."""

    def __init__(self, model_path: str | Path, metadata: ModelMetadata, provider: str = CPU_EP,
                 precision: str = 'fp32', engine_cache_dir: str | Path | None = None, intra_op_threads: int = 0,
                 max_batch: int = 8, device_id: int = 0, intra_op_spinning: bool = True):
        import onnxruntime as ort

        if provider not in PROVIDER_PREFERENCE:
            raise BackendError(f'unknown onnxruntime provider {provider!r}; use one of {PROVIDER_PREFERENCE}')
        if provider not in ort.get_available_providers():
            raise BackendError(f'onnxruntime provider {provider} is not available in this onnxruntime build '
                               f'(available: {ort.get_available_providers()}); install onnxruntime-gpu for GPU providers')
        self.metadata = metadata
        self.max_batch = int(max_batch)
        # an INT8 (QDQ) model runs in int8 on every provider; otherwise only the TensorRT EP honours `precision`
        if getattr(metadata, 'precision', 'fp32') == 'int8':
            self.precision = 'int8'
        else:
            self.precision = precision if provider == TENSORRT_EP and precision != 'int8' else 'fp32'
        chain: list = []
        if provider == TENSORRT_EP:
            opts = {'device_id': device_id, 'trt_fp16_enable': precision == 'fp16',
                    'trt_int8_enable': self.precision == 'int8', 'trt_timing_cache_enable': True}
            if engine_cache_dir is not None:
                Path(engine_cache_dir).mkdir(parents=True, exist_ok=True)
                opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(engine_cache_dir))
            chain.append((TENSORRT_EP, opts))
        if provider in (TENSORRT_EP, CUDA_EP):
            chain.append((CUDA_EP, {'device_id': device_id}))
        chain.append(CPU_EP)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads > 0:
            so.intra_op_num_threads = int(intra_op_threads)
        so.inter_op_num_threads = 1
        # spinning: the pool threads busy-wait for the next operator instead of sleeping; fastest on idle cores,
        # but on cores shared with other threads (the node's executor, DDS, other processes) they compete
        so.add_session_config_entry('session.intra_op.allow_spinning', '1' if intra_op_spinning else '0')
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=so, providers=chain)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            raise BackendError(f'ONNX Runtime cannot load {model_path} ({type(exc).__name__}: {str(exc).strip()}); '
                               f'the file may be truncated or not an ONNX model: re-export or re-copy it') from exc
        self.provider = self.session.get_providers()[0]
        suffix = f'/{self.precision}' if self.provider == TENSORRT_EP or self.precision == 'int8' else ''
        self.name = f'onnxruntime[{self.provider}{suffix}]'
        self._check_interface(model_path)

    def _check_interface(self, model_path) -> None:
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = {o.name for o in self.session.get_outputs()}
        if INPUT_NAME not in ins or OUTPUT_NAME not in outs:
            raise BackendError(f'{model_path}: needs input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, '
                               f'has inputs {sorted(ins)} and outputs {sorted(outs)}')
        shape = list(ins[INPUT_NAME].shape)
        want = [3, self.metadata.input_height, self.metadata.input_width]
        fixed = [d if isinstance(d, int) else None for d in shape[1:]]
        if len(shape) != 4 or any(f is not None and f != w for f, w in zip(fixed, want)):
            raise BackendError(f'{model_path}: input {INPUT_NAME!r} has shape {shape}, the metadata says '
                               f'[N, 3, {want[1]}, {want[2]}]; re-export the model or fix its metadata')

    def run(self, batch: np.ndarray) -> np.ndarray:
        """depth float32 [N,1,H,W] for image float32 [N,3,H,W]."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            out = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        except Exception as exc:
            raise BackendError(f'{self.name} failed on a batch of shape {batch.shape}: {exc}') from exc
        n, _, h, w = batch.shape
        if out.shape != (n, 1, h, w):
            raise BackendError(f'{self.name}: output {OUTPUT_NAME!r} has shape {out.shape}, expected {(n, 1, h, w)}')
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.session = None
