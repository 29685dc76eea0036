"""Which models the service can run, loaded once each and shared by all their sessions."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
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
    # runs one-frame calls: ``model.optimize.for_streaming``'s StreamStep (or an onnxruntime step)
    step: Any = None
    _windows: dict[int, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.weights}"

    def windowed(self, window: int) -> Any:
        """A ``model.streaming.WindowedStream`` over ``step`` for a window length (the reference
        arithmetic the worker's bank follows; tests and tools compare against it)."""
        with self._lock:
            stream = self._windows.get(window)
            if stream is None:
                from model.streaming import WindowedStream

                stream = self._windows[window] = WindowedStream(self.net, window=window, forward=self.step)
            return stream

    def init_state(self, batch: int) -> Any:
        """Zero states for ``batch`` new streams, in the layout (and dtype) ``step`` reads."""
        size = self.input_size
        init = getattr(self.step, "init_state", None)
        return init(batch, size, size) if init is not None else self.net.init_state(batch, size, size)

    def describe(self) -> dict[str, Any]:
        """What runs the forwards (``GET /models``, the worker's log)."""
        describe = getattr(self.step, "describe", None)
        if describe is not None:
            return describe()
        return {"backend": "onnxruntime" if type(self.step).__name__.startswith("Onnx") else "eager",
                "precision": "fp32", "compiling": False, "compiled_batch_sizes": []}


def is_weights_path(weights: str | None) -> bool:
    """A weights setting that names a file (``./mine.safetensors``), not a tag (``motion``)."""
    return bool(weights) and (weights.endswith(".safetensors") or "/" in weights or os.sep in weights)


def weights_file_choice(path: str | Path) -> tuple[str, str]:
    """(stream model, tag) of a weights file, from its own metadata; ``ValueError`` that says why not.

    The tag is the file stem, less a leading ``<model>_`` (the cache's own naming:
    ``movinet_a2_stream_kinetics600.safetensors`` is ``kinetics600``).
    """
    import model
    from model.io.weights import read_metadata

    path = Path(path)
    name = read_metadata(path)["model"]  # ValueError: missing, not safetensors, not ours
    if name not in model.list_models():
        raise ValueError(f"{path} holds {shown(name)}, which is not a model of this version")
    if model.model_info(name).mode != "stream":
        raise ValueError(f"{path} holds {name}, a base model; the service runs *_stream models")
    tag = path.stem.removeprefix(f"{name}_") or path.stem
    return name, tag


def scan_weights_dir(folder: str | Path) -> dict[str, dict[str, Path]]:
    """model → tag → file for every stream-model weights file in ``folder`` (others are logged, skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"MOVINET_WEIGHTS_DIR={folder} is not a folder")
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        try:
            name, tag = weights_file_choice(path)
        except ValueError as exc:
            log.warning(kv("weights_file_skipped", path=str(path), reason=str(exc)))
            continue
        if tag == RANDOM or tag in found.get(name, {}):
            log.warning(kv("weights_file_skipped", path=str(path), reason=f"tag {tag!r} is taken for {name}"))
            continue
        found.setdefault(name, {})[tag] = path
    return found


class ModelRegistry:
    def __init__(self, default_model: str, default_weights: str | None, allow_random_weights: bool,
                 device: str = "auto", backend: str = "torch", weights_dir: str | Path | None = None,
                 torch_path: str = "auto", precision: str = "fp32", compile: str = "off"):
        self.default_model = default_model
        # Weights files beyond the cache's and the package's: MOVINET_WEIGHTS_DIR's, and a default
        # given as a path. Sessions name them by tag; a request never names a path.
        self._files: dict[str, dict[str, Path]] = scan_weights_dir(weights_dir) if weights_dir else {}
        self._aliases: dict[str, str] = {}
        if is_weights_path(default_weights):
            name, tag = weights_file_choice(default_weights)
            if name != default_model:
                raise ValueError(f"{default_weights} holds {name}, not {default_model}")
            self._files.setdefault(name, {})[tag] = Path(default_weights)
            self._aliases[default_weights] = tag
            default_weights = tag
        self.default_weights = default_weights
        self.allow_random_weights = allow_random_weights
        self.backend = backend
        # for_streaming's choices (MOVINET_TORCH_PATH, MOVINET_PRECISION, MOVINET_COMPILE); the
        # forwards run beside the event loop's and the decoders' Python threads (shared_gil)
        self.fast_path = {"backend": torch_path, "precision": precision, "compile": compile, "shared_gil": True}
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
            weights = self.weights_of(name)
            if not weights:
                continue
            # the facts of the weights a session gets by default (the loaded ones once loaded): trained
            # weights carry their own size, rate and window in their file
            tag = self.default_weights if name == self.default_model and self.default_weights in weights else weights[0]
            loaded = next((self._loaded[f"{name}:{t}"] for t in [tag, *weights] if f"{name}:{t}" in self._loaded), None)
            info = model.model_info(name)
            if loaded is not None:
                info = dataclasses.replace(info, input_size=loaded.input_size, frame_rate=loaded.frame_rate,
                                           clip_frames=loaded.clip_frames)
            elif tag != RANDOM:
                meta = read_metadata(self._source(name, tag))["info"]
                info = dataclasses.replace(info, **{k: meta[k] for k in ("input_size", "frame_rate", "clip_frames")})
            entry: dict[str, Any] = {
                "name": name, "weights": weights, "default": name == self.default_model,
                "input_size": info.input_size, "frame_rate": info.frame_rate, "clip_frames": info.clip_frames,
                "loaded": loaded is not None,
            }
            if loaded is not None:
                runtime = loaded.describe()
                entry.update(num_classes=len(loaded.labels),
                             runtime={key: runtime.get(key) for key in
                                      ("backend", "precision", "compiling", "compiled_batch_sizes")})
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
        available = self.weights_of(name)
        weights = self._aliases.get(weights, weights) if weights else weights
        if weights is None:
            weights = self.default_weights if name == self.default_model and self.default_weights else None
        if weights is None:
            if not available:
                raise ApiError(422, "no_weights", f"no weights are available for {name}")
            weights = available[0]
        if weights not in available:
            raise ApiError(422, "no_weights", f"weights {shown(weights)} not available for {name}: {available}")
        return name, weights

    def weights_of(self, name: str) -> list[str]:
        """The weights tags of ``name`` here: the package's and the cache's, the weights files', then
        ``random`` where allowed."""
        import model

        tags = list(model.available_weights(name))
        tags += [tag for tag in self._files.get(name, {}) if tag not in tags]
        if self.allow_random_weights:
            tags.append(RANDOM)
        return tags

    def _source(self, name: str, weights: str) -> Path:
        """The file of a weights tag: the package's or the cache's first, then the weights files'."""
        import model

        if weights in model.available_weights(name) or weights not in self._files.get(name, {}):
            return model.resolve_weights(name, weights)
        return self._files[name][weights]

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
                self._loaded[key] = await asyncio.to_thread(_build, name, weights, self.fast_path, self.device,
                                                            self._onnx_directory(),
                                                            None if weights == RANDOM else self._source(name, weights))
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


def _build(name: str, weights: str, fast_path: dict[str, str] | None = None, device: Any = None,
           onnx_dir: Any = None, source: Any = None) -> LoadedModel:
    import time

    import torch

    import model

    started = time.perf_counter()
    from model.optimize import optimize_for_inference

    net = model.create_model(name, weights=None if weights == RANDOM else (source or weights))
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
    if onnx_dir is not None:  # MOVINET_BACKEND=onnxruntime: exported at load, checked equal to torch
        from model.export import onnx_stream_step

        loaded.step = onnx_stream_step(net.cpu(), (size, size), onnx_dir, threads=torch.get_num_threads())
        net.to(device)
    else:  # the fastest path that agrees with the model (docs/benchmarks.md#fast-stream-paths)
        from model.optimize import for_streaming

        loaded.step = for_streaming(net, device, height=size, width=size, **(fast_path or {}))
    with torch.inference_mode():  # warm up: first calls allocate and pick kernels
        for batch in (1, 2, 4):
            state = loaded.init_state(batch)
            for _ in range(3):
                _, state = loaded.step(torch.zeros(batch, 3, 1, size, size, device=device), state)
    path = loaded.describe()
    log.info(kv("model_loaded", model=name, weights=weights, input_size=loaded.input_size,
                frame_rate=loaded.frame_rate, clip_frames=loaded.clip_frames, path=path.get("backend"),
                precision=path.get("precision"), compiling=path.get("compiling"),
                seconds=time.perf_counter() - started))
    return loaded
