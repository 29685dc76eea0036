"""Which models the service can run, loaded once each and shared by all their sessions."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from service.errors import ApiError, shown
from service.logs import kv

log = logging.getLogger("service.registry")

RANDOM = "random"  # the weights tag of an untrained model (only with allow_random_weights)


@dataclass
class LoadedModel:
    """One network in eval mode plus what sessions need to know about it."""

    name: str
    weights: str
    net: Any  # torch.nn.Module from model.create_model
    input_size: int
    short_side: int  # frames are resized to this short side, then centre-cropped to input_size
    frame_rate: float
    clip_frames: int
    labels: list[str]
    device: Any = None  # torch.device the model runs on
    step: Any = None  # runs one-frame calls: the TorchScript trace of ``net`` (or ``net`` itself)
    _windows: dict[int, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.weights}"

    def windowed(self, window: int) -> Any:
        """The shared ``model.streaming.WindowedStream`` for a window length."""
        with self._lock:
            stream = self._windows.get(window)
            if stream is None:
                from model.streaming import WindowedStream

                stream = self._windows[window] = WindowedStream(self.net, window=window, forward=self.step)
            return stream


class ModelRegistry:
    def __init__(self, default_model: str, default_weights: str | None, allow_random_weights: bool,
                 trace: bool = True, device: str = "auto", backend: str = "torch"):
        self.default_model = default_model
        self.default_weights = default_weights
        self.allow_random_weights = allow_random_weights
        self.trace = trace
        self.backend = backend
        self.device = resolve_device(device)
        self._onnx_dir: Any = None
        self._loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def catalog(self) -> list[dict[str, Any]]:
        """Every stream model with weights that can be loaded (no model is built for this)."""
        import model
        from model.io.weights import read_metadata

        entries = []
        for name in model.list_models():
            if model.model_info(name).mode != "stream":
                continue  # base models pool over whole clips: no frame-by-frame state to serve
            weights = list(model.available_weights(name))
            if self.allow_random_weights:
                weights.append(RANDOM)
            if not weights:
                continue
            info = model.model_info(name)
            if weights[0] != RANDOM:  # the facts of trained weights travel in their file
                meta = read_metadata(model.resolve_weights(name, weights[0]))["info"]
                info = dataclasses.replace(info, **{k: meta[k] for k in ("input_size", "frame_rate", "clip_frames")})
            entry: dict[str, Any] = {
                "name": name, "weights": weights, "default": name == self.default_model,
                "input_size": info.input_size, "frame_rate": info.frame_rate, "clip_frames": info.clip_frames,
                "loaded": False,
            }
            for tag in weights:
                loaded = self._loaded.get(f"{name}:{tag}")
                if loaded is not None:
                    entry.update(loaded=True, num_classes=len(loaded.labels))
                    break
            entries.append(entry)
        return entries

    def resolve(self, name: str | None, weights: str | None) -> tuple[str, str]:
        """(name, weights tag) for a request, or an :class:`ApiError` that says why not."""
        import model

        name = name or self.default_model
        if name not in model.list_models():
            raise ApiError(404, "unknown_model", f"no model named {shown(name)}; see GET /models")
        if model.model_info(name).mode != "stream":
            raise ApiError(422, "model_not_streamable", f"{name} is a base model; use a *_stream model")
        available = list(model.available_weights(name))
        if self.allow_random_weights:
            available.append(RANDOM)
        if weights is None:
            weights = self.default_weights if name == self.default_model and self.default_weights else None
        if weights is None:
            if not available:
                raise ApiError(422, "no_weights", f"no weights are available for {name}")
            weights = available[0]
        if weights not in available:
            raise ApiError(422, "no_weights", f"weights {shown(weights)} not available for {name}: {available}")
        return name, weights

    def get_loaded(self, key: str) -> LoadedModel | None:
        return self._loaded.get(key)

    async def load(self, name: str | None = None, weights: str | None = None) -> LoadedModel:
        name, weights = self.resolve(name, weights)
        key = f"{name}:{weights}"
        if key in self._loaded:
            return self._loaded[key]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._loaded:
                self._loaded[key] = await asyncio.to_thread(_build, name, weights, self.trace, self.device,
                                                            self._onnx_directory())
        return self._loaded[key]

    def _onnx_directory(self) -> Any:
        """Where onnxruntime's exports live (a temporary folder, removed with the process)."""
        if self.backend != "onnxruntime":
            return None
        if self._onnx_dir is None:
            import tempfile

            self._onnx_dir = tempfile.TemporaryDirectory(prefix="movinet-onnx-")
        return self._onnx_dir.name

    @property
    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())


def resolve_device(device: str) -> Any:
    """``auto`` → the first CUDA GPU when there is one, else the CPU; ``cpu``, ``cuda``, ``cuda:N``.
    Raises ``ValueError`` for a GPU that is not there."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"MOVINET_DEVICE={device!r} is not a torch device: {exc}") from None
    if resolved.type == "cuda" and not (torch.cuda.is_available()
                                        and (resolved.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"MOVINET_DEVICE={device!r}, but torch sees no such CUDA device "
                         f"({torch.cuda.device_count()} available)")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"MOVINET_DEVICE={device!r}: only cpu and cuda are supported")
    return resolved


def _build(name: str, weights: str, trace: bool = True, device: Any = None, onnx_dir: Any = None) -> LoadedModel:
    import time

    import torch

    import model

    started = time.perf_counter()
    from model.optimize import optimize_for_inference

    net = model.create_model(name, weights=None if weights == RANDOM else weights)
    # BN folded into the convolutions: same outputs to ~1e-6, ~10 % faster (docs/benchmarks.md)
    net = optimize_for_inference(net.eval())
    device = device or torch.device("cpu")
    net = net.to(device)
    info = net.info
    if info.mode != "stream":
        raise ApiError(422, "model_not_streamable", f"{name} is not a stream model")
    loaded = LoadedModel(
        name=name, weights=weights, net=net, input_size=int(info.input_size),
        short_side=int(getattr(info, "eval_min_size", 0) or info.input_size),
        frame_rate=float(info.frame_rate), clip_frames=int(info.clip_frames), labels=list(net.labels),
        device=device,
    )
    size = loaded.input_size
    loaded.step = net
    if onnx_dir is not None:  # MOVINET_BACKEND=onnxruntime: exported at load, checked equal to torch
        from model.export import onnx_stream_step

        loaded.step = onnx_stream_step(net.cpu(), (size, size), onnx_dir, threads=torch.get_num_threads())
        net.to(device)
    elif trace:  # one-frame calls in TorchScript: no GIL held during a forward (docs/benchmarks.md)
        from model.optimize import trace_frame_step

        loaded.step = trace_frame_step(net, size, size)
    with torch.inference_mode():  # warm up: first calls allocate and pick kernels
        for batch in (1, 2, 4):
            state = net.init_state(batch, size, size)
            for _ in range(3):
                _, state = loaded.step(torch.zeros(batch, 3, 1, size, size, device=device), state)
    log.info(kv("model_loaded", model=name, weights=weights, input_size=loaded.input_size,
                frame_rate=loaded.frame_rate, clip_frames=loaded.clip_frames,
                seconds=time.perf_counter() - started))
    return loaded
