"""A stream model's one-frame call run by a chosen path, checked against the model at load.

:class:`StreamStep` is what :func:`model.optimize.for_streaming` returns; this module holds the
checks (:func:`check_against_reference`, :data:`TOLERANCE`), the compiled path (one static
inductor graph per batch size, :func:`compile_graphs`, other batches on the eager graph) and what a
worker reports (:meth:`StreamStep.describe`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .frame_graph import FrameGraph
from .movinet import MoViNet, State

log = logging.getLogger("model.optimize")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Largest |logit difference| from the reference a path may show at its load check: absolute for
# fp32; bf16 keeps 8 bits of mantissa, so its bound is relative to the logits' scale (the largest
# |logit|, at least 1). docs/benchmarks.md has bf16's top-1 agreement on real video.
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}


def tolerance(precision: str, logit_scale: float) -> float:
    """The load check's bound on |logit difference| for ``precision`` (see ``TOLERANCE``)."""
    return TOLERANCE[precision] * (max(1.0, logit_scale) if precision == "bf16" else 1.0)
# Static graphs compiled by default, per precision. Measured on a 2-core AMD EPYC (avx512_bf16,
# docs/benchmarks.md): in fp32 the compiled graph beats the eager one at batch 1 and 8 and ties
# at 64; in bf16 it wins only at batch 1 (inductor's bf16 kernels lose to oneDNN's above that).
DEFAULT_BATCH_SIZES = {"fp32": (1, 8), "bf16": (1,)}
StepFn = Callable[[Tensor, State], "tuple[Tensor, State]"]


def retain_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Let glibc keep freed blocks up to ``limit_bytes`` (at most 1 GiB) for reuse instead of
    returning them to the system: a forward allocates feature maps of tens of MB (64 sessions at
    172x172), which glibc otherwise maps fresh every call (its mmap threshold stops at 32 MB) and
    the kernel zeroes page by page: 140-154 against 271-332 ms a forward there, fp32
    (docs/benchmarks.md). The in-process form of the jemalloc/tcmalloc advice of PyTorch's CPU
    tuning guide. Process-wide, and the process keeps its peak heap: for processes that run large
    CPU forwards. False where the C library is not glibc (nothing changed)."""
    import ctypes
    import ctypes.util

    limit = min(int(limit_bytes), 1 << 30)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, limit)) and bool(mallopt(m_trim_threshold, 2 * limit - 1))


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); elsewhere oneDNN
    emulates it and bf16 is no faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def inductor_cache_dir() -> Path:
    """Where compiled graphs are cached: ``$TORCHINDUCTOR_CACHE_DIR`` if set, else
    ``$MOVINET_CACHE_DIR/inductor`` (default ``~/.cache/movinet/inductor``), not inductor's default
    under ``/tmp`` that a container restart wipes."""
    explicit = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    root = os.environ.get("MOVINET_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "movinet"
    return Path(root) / "inductor"


def _staggered_batch(net: MoViNet, batch: int, height: int, width: int, generator: torch.Generator) -> State:
    """A reference state for ``batch`` sessions that have seen 1, 2, ... frames: one batch whose
    sessions are at different positions in their streams."""
    device = next(net.parameters()).device
    states = []
    for index in range(batch):
        state = net.init_state(1, height, width)
        for _ in range(index + 1):
            frame = torch.rand(1, 3, 1, height, width, generator=generator).to(device)
            _, state = net(frame, state)
        states.append(state)
    return {key: torch.cat([state[key] for state in states]) for key in states[0]}


@torch.no_grad()
def check_against_reference(step: StepFn, net: MoViNet, height: int, width: int, *, batch: int = 3,
                            frames: int = 3, prepare: Callable[[State], State] | None = None,
                            seed: int = 0) -> tuple[float, float]:
    """Run ``frames`` frames through ``step`` and the reference ``net`` for ``batch`` sessions at
    different positions; return the largest absolute logit difference (``inf`` if ``step``
    returns other shapes or state keys) and the largest |reference logit|."""
    generator = torch.Generator().manual_seed(seed)
    device = next(net.parameters()).device
    reference = _staggered_batch(net, batch, height, width, generator)
    candidate = prepare(dict(reference)) if prepare is not None else dict(reference)
    worst = scale = 0.0
    for _ in range(frames):
        frame = torch.rand(batch, 3, 1, height, width, generator=generator).to(device)
        want, reference = net(frame, reference)
        got, candidate = step(frame, candidate)
        if got.shape != want.shape or candidate.keys() != reference.keys():
            return float("inf"), scale
        worst = max(worst, (got.float() - want.float()).abs().max().item())
        scale = max(scale, want.abs().max().item())
    return worst, scale


class _BySize:
    """Run a batch through the static graph compiled for its size, any other batch through the
    eager graph. Chunking a larger batch into compiled sizes loses to the eager graph at that
    batch (64x64: 50 ms for 4 x 8 against 26 ms for one eager 32; 172x172: a tie at 64,
    docs/benchmarks.md), so the compiled sizes are the batches a worker sees most: one session,
    and its usual tick."""

    def __init__(self, graphs: dict[int, StepFn], eager: StepFn) -> None:
        self.graphs = graphs
        self.eager = eager

    def __call__(self, frames: Tensor, state: State) -> tuple[Tensor, State]:
        return self.graphs.get(frames.shape[0], self.eager)(frames, state)


@dataclasses.dataclass
class PathCheck:
    """What the load check measured for one path."""

    backend: str
    precision: str
    max_abs_diff: float
    tolerance: float
    seconds: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


class StreamStep:
    """The one-frame call of a stream model, run by the path :func:`for_streaming` picked.

    ``logits, state = step(frames, state)``: ``frames`` float ``[B, 3, 1, H, W]`` in ``[0, 1]``,
    ``state`` the model's state dict (any batch size, sessions at any positions; ``None`` starts
    every session), logits ``[B, classes]`` float32. The returned state is new tensors; the one
    passed in is not modified. States from :meth:`init_state` are already in the layout the fast
    paths read (stream buffers ``channels_last_3d``, in bf16 for ``precision == "bf16"``); a state
    from the model itself, ``stack_states`` or ``state_from_bytes`` is accepted and converted
    (as is a returned one whose buffers are views of a wider window: the bf16 fused graph's).
    """

    def __init__(self, net: MoViNet, height: int, width: int, precision: str, backend: str,
                 run: StepFn, checks: list[PathCheck]) -> None:
        self.net = net
        self.height, self.width = height, width
        self.precision = precision
        self.backend = backend
        self.checks = checks
        self.compiled_batch_sizes: tuple[int, ...] = ()
        self.compile_error: str | None = None
        self._run = run
        self._dtype = DTYPES[precision]
        self._buffer_keys = tuple(k for k in net.state_shapes(height, width) if k.endswith("_stream_buffer"))
        self._compile_thread: threading.Thread | None = None

    # --- the call --------------------------------------------------------------------------------

    def __call__(self, frames: Tensor, state: State | None) -> tuple[Tensor, State]:
        if frames.ndim != 5 or frames.shape[1:3] != (3, 1):
            raise ValueError(f"frames must be [B, 3, 1, H, W], got {list(frames.shape)}")
        batch, height, width = frames.shape[0], frames.shape[3], frames.shape[4]
        if (height, width) != (self.height, self.width):
            raise ValueError(f"this step was built for {self.height}x{self.width} frames, got {height}x{width}")
        state = self.init_state(batch, height, width) if state is None else self.prepare_state(state)
        with torch.inference_mode(False), torch.no_grad():
            return self._run(frames, state)

    def init_state(self, batch: int, height: int | None = None, width: int | None = None) -> State:
        """Zero state for ``batch`` new sessions, in the layout this step reads."""
        return self.prepare_state(self.net.init_state(batch, height or self.height, width or self.width))

    def prepare_state(self, state: State) -> State:
        """``state`` with its stream buffers in this step's layout (a no-op when they already are)."""
        if self.backend in ("eager", "trace"):
            return state
        state = dict(state)
        for key in self._buffer_keys:
            value = state[key]
            if value.dtype != self._dtype or not value.is_contiguous(memory_format=torch.channels_last_3d):
                state[key] = value.to(self._dtype).contiguous(memory_format=torch.channels_last_3d)
        return state

    # --- compilation -----------------------------------------------------------------------------

    def compile(self, batch_sizes: Sequence[int] | None = None, background: bool = False,
                freeze: bool = False) -> None:
        """Build the ``"compiled"`` path for these batch sizes and switch to
        it once every size passes the check; a size that fails to build or to agree leaves the
        current path in place (``compile_error`` says why). ``background=True`` returns at once;
        ``freeze=True`` prepacks the weights for oneDNN (faster, but rebuilt at every start)."""
        sizes = tuple(sorted(set(batch_sizes or DEFAULT_BATCH_SIZES[self.precision])))
        if not sizes or min(sizes) < 1:
            raise ValueError(f"batch_sizes must be positive, got {batch_sizes}")
        if background:
            self._compile_thread = threading.Thread(target=self._compile, args=(sizes, freeze), daemon=True,
                                                    name=f"movinet-compile-{self.net.name}")
            self._compile_thread.start()
        else:
            self._compile(sizes, freeze)

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Wait for a background :meth:`compile`; ``True`` if the compiled path is now in use."""
        if self._compile_thread is not None:
            self._compile_thread.join(timeout)
        return self.backend == "compiled"

    def _compile(self, sizes: tuple[int, ...], freeze: bool) -> None:
        started = time.perf_counter()
        try:
            graphs, checks = compile_graphs(self.net, self.height, self.width, self.precision, sizes,
                                             self.prepare_state, freeze)
        except Exception as error:  # a compiler that does not work here leaves the eager paths
            self.compile_error = f"{type(error).__name__}: {error}"[:500]
            log.warning("compiled path unavailable for %s: %s", self.net.name, self.compile_error)
            return
        self.checks.extend(checks)
        failed = [check for check in checks if not check.passed]
        if failed:
            self.compile_error = "; ".join(f"{c.backend} differs by {c.max_abs_diff:.2e} > {c.tolerance:.1e}" for c in failed)
            log.warning("compiled path for %s differs from the reference, not used: %s", self.net.name, self.compile_error)
            return
        self._run, self.backend, self.compiled_batch_sizes = _BySize(graphs, self._run), "compiled", sizes
        log.info("compiled path for %s ready: batch sizes %s, %.0f s", self.net.name, sizes, time.perf_counter() - started)

    # --- what a worker reports -------------------------------------------------------------------

    def describe(self) -> dict:
        """What runs: backend, precision, sizes, the checks and why a faster path was not used."""
        return {
            "model": self.net.name, "backend": self.backend, "precision": self.precision,
            "height": self.height, "width": self.width, "device": str(next(self.net.parameters()).device),
            "compiled_batch_sizes": list(self.compiled_batch_sizes),
            "compiling": self._compile_thread is not None and self._compile_thread.is_alive(),
            "compile_error": self.compile_error, "torch_threads": torch.get_num_threads(),
            "checks": [dataclasses.asdict(check) | {"passed": check.passed} for check in self.checks],
        }

    def __repr__(self) -> str:
        return f"StreamStep({self.net.name}, {self.height}x{self.width}, backend={self.backend}, precision={self.precision})"


def compile_graphs(net: MoViNet, height: int, width: int, precision: str, sizes: tuple[int, ...],
                    prepare: Callable[[State], State], freeze: bool = False) -> tuple[dict[int, StepFn], list[PathCheck]]:
    """One static inductor graph per batch size, each checked against the reference."""
    import torch._dynamo
    import torch._inductor.config

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache_dir()))
    # one cache entry per (model, size, batch): raise dynamo's per-function limit (8 by default)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    graph = FrameGraph(net, height, width, DTYPES[precision], se_matmul=False, fused=False, for_compiler=True).eval()
    compiled = torch.compile(graph, fullgraph=True, dynamic=False)
    graphs: dict[int, StepFn] = {}
    checks = []
    for size in sizes:
        started = time.perf_counter()

        def run(frames: Tensor, state: State) -> tuple[Tensor, State]:
            # never compile on the hot path: a call the graph's guards reject (a state in another
            # layout or dtype than prepare_state gives) runs the same graph eagerly instead
            with torch.compiler.set_stance("eager_on_recompile"):
                return compiled(frames, state)

        # cpp_wrapper: the whole graph is one C++ call that releases the GIL. Freezing (weights
        # prepacked for oneDNN) is faster per call but its graphs cannot be cached (oneDNN tensors
        # do not pickle), so every start rebuilds them; without it a restart loads the graph from
        # the FX graph cache in seconds (docs/benchmarks.md).
        with torch._inductor.config.patch(cpp_wrapper=True, freezing=freeze), \
                torch.inference_mode(False), torch.no_grad():
            state = prepare(net.init_state(size, height, width))
            compiled(torch.rand(size, 3, 1, height, width, device=state[next(iter(state))].device), state)
        diff, scale = check_against_reference(run, net, height, width, batch=size, frames=3, prepare=prepare)
        checks.append(PathCheck(f"compiled[batch={size}]", precision, diff, tolerance(precision, scale),
                                round(time.perf_counter() - started, 1)))
        graphs[size] = run
    return graphs, checks
