"""The runtime a pruned model ships on: its channel granularity and how one forward pass is timed there.

A MACs cut turns into a latency cut only when the kept widths suit the runtime's kernels. onnxruntime's CPU
execution provider runs a convolution in its fast blocked layout (NCHWc) only when the channel counts are multiples
of the CPU's vector block: 8 floats with AVX2, 16 with AVX-512 (its NCHWc graph transformer and MLAS kernels);
other counts fall back to a slower path, and layout reorders appear at every boundary. :class:`Runtime` names the
runtime, detects that block (:func:`cpu_vector_block`) and builds a *runner* that times a model in the runtime
itself: for ``"onnxruntime"`` the exported ONNX graph (:func:`grouppruner.export.export_onnx`, BatchNorm folded,
the same opset a deployment uses) in an ``InferenceSession``.

:func:`compare_latency` times several models *interleaved*: every round runs each model in turn and keeps, per
model, the fastest of a few calls (a preempted call is slower, never faster); the ratio to the first model is taken
per round and its median reported. Load that comes and goes then hits both models of a round alike, so the ratio
stays put on a busy machine while absolute times do not. :class:`LatencyComparison` records what was measured and
under which conditions (runtime, threads, block, load average).

Runtimes (``runtime=`` of :class:`~grouppruner.pruning.GroupPruner` and the flows):

- ``"onnxruntime"`` (the default, :data:`DEFAULT_RUNTIME`): onnxruntime's CPU execution provider; kept channel
  counts on the CPU's vector block; ``target_latency`` measured in onnxruntime (the ``onnx`` extra).
- ``"torch"``: eager PyTorch, any channel count (the behaviour before runtimes existed); ``target_latency``
  measured in eager PyTorch.

What ships is what is measured: a :class:`Runtime` also carries the onnxruntime session settings
(:func:`session_options`, with ``spin_wait``) and the deployment rewrite applied to a model before it is timed
(``deploy``, e.g. :func:`grouppruner.integrations.ultralytics.deploy.split_free`), so that the latency model and
``target_latency``'s measurements time the graph and the session the user gets.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._utils.calls import ForwardFn, call_model, eval_mode, split_inputs
from ._utils.errors import InvalidOptionError, MissingExtraError, OptionTypeError

__all__ = [
    "DEFAULT_RUNTIME",
    "DEFAULT_SPIN_WAIT",
    "RUNTIMES",
    "LatencyComparison",
    "Runtime",
    "compare_latency",
    "cpu_vector_block",
    "onnx_session",
    "resolve_runtime",
    "session_options",
]

logger = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = ("onnxruntime", "torch")
"""The runtimes a plan can be made for."""

DEFAULT_SPIN_WAIT = False
"""onnxruntime's idle pool threads sleep instead of spinning by default. A spinning thread holds a core while it
waits for work; where the CPU is shared (another process on every core) a two-thread session then spends most of
its time waiting for a core: dense yolov8n at 320, 2 threads, on this 2-core machine under load, see
docs/guides/ultralytics.md. Spinning saves a wake-up per parallel section on an idle machine, a smaller gain."""

DEFAULT_RUNTIME = "onnxruntime"
"""The runtime of a user who names none. onnxruntime on the CPU is how most CPU deployments of these detectors run,
and free widths cost it most of the latency cut (yolo11n at half the MACs: 5 % faster on two threads, see
docs/benchmarks.md); widths on the vector block also cost eager PyTorch nothing measurable (same page)."""

Runner = Callable[[], Any]
"""One forward pass of a fixed model on fixed inputs, in some runtime."""


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:  # not Linux: torch's own detection below
        pass
    return set()


def cpu_vector_block() -> int:
    """Floats per SIMD register of this CPU: the channel multiple of onnxruntime's blocked CPU convolutions.

    Returns:
        16 with AVX-512 (``avx512f``), 8 with AVX2, else 1 (no blocked layout known: any width). Read from
        ``/proc/cpuinfo`` (what onnxruntime's MLAS sees), else from ``torch.backends.cpu.get_cpu_capability()``.
    """
    flags = _cpu_flags()
    if not flags:
        capability = torch.backends.cpu.get_cpu_capability()
        flags = {"avx512f"} if capability.startswith("AVX512") else {"avx2"} if capability == "AVX2" else set()
    if "avx512f" in flags:
        return 16
    return 8 if "avx2" in flags else 1


@dataclass(frozen=True)
class Runtime:
    """Where a pruned model will run: the name, the channel block and the thread count.

    Args:
        name: ``"onnxruntime"`` or ``"torch"`` (:data:`RUNTIMES`).
        threads: intra-op threads the model runs with; ``None``: ``torch.get_num_threads()`` at timing time.
        block: channel multiple of the runtime's fast kernels; ``None`` detects it (:func:`cpu_vector_block` for
            onnxruntime, 1 for eager PyTorch). A group smaller than the block keeps its width.
        spin_wait: onnxruntime only: whether idle pool threads spin (``session.intra_op.allow_spinning`` and
            ``session.inter_op.allow_spinning``) instead of sleeping; default :data:`DEFAULT_SPIN_WAIT`. Used by
            every session this runtime opens (:meth:`session_options`), timings included.
        deploy: the rewrite a model ships through, applied to a model before it is timed (``module -> module``,
            the forward kept; e.g. :func:`grouppruner.integrations.ultralytics.deploy.split_free`); ``None``: as it is.
    """

    name: str = DEFAULT_RUNTIME
    threads: int | None = None
    block: int | None = None
    spin_wait: bool = DEFAULT_SPIN_WAIT
    deploy: Callable[[nn.Module], nn.Module] | None = None

    def __post_init__(self) -> None:
        if self.name not in RUNTIMES:
            raise InvalidOptionError(f"runtime must be one of {list(RUNTIMES)}, got {self.name!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise InvalidOptionError(f"Runtime({self.name!r}): threads must be None or >= 1, got {self.threads!r}")
        if self.block is None:
            object.__setattr__(self, "block", cpu_vector_block() if self.name == "onnxruntime" else 1)
        elif isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
            raise InvalidOptionError(f"Runtime({self.name!r}): block must be None or an int >= 1, got {self.block!r}")
        if not isinstance(self.spin_wait, bool):
            raise OptionTypeError(f"Runtime({self.name!r}): spin_wait must be a bool, got {self.spin_wait!r}")
        if self.deploy is not None and not callable(self.deploy):
            raise OptionTypeError(f"Runtime({self.name!r}): deploy must be None or callable, got {self.deploy!r}")

    @property
    def channel_block(self) -> int:
        """The resolved block (an int >= 1)."""
        assert self.block is not None  # resolved in __post_init__
        return self.block

    def thread_count(self) -> int:
        """The threads a measurement uses."""
        return self.threads if self.threads is not None else torch.get_num_threads()

    def runner(self, model: nn.Module, example_inputs: Any, forward_fn: ForwardFn | None = None) -> Runner:
        """A zero-argument callable running one forward pass of ``model`` on ``example_inputs`` in this runtime.

        The model timed is ``deploy(model)`` when a ``deploy`` rewrite is set. For ``"onnxruntime"`` it is
        exported once (BatchNorm folded, opset 17, as :func:`~grouppruner.export.export_onnx` writes it for
        deployment) and run in a CPU ``InferenceSession`` opened with :meth:`session_options`; for ``"torch"`` it
        runs eagerly in eval mode under ``torch.inference_mode`` with ``threads`` torch threads (through
        ``forward_fn`` if given). The model is not changed.

        Raises:
            MissingExtraError: onnxruntime (or onnx) is not installed.
            InvalidOptionError: ``forward_fn`` with onnxruntime (the export calls the model itself).
        """
        threads = self.thread_count()
        if self.deploy is not None:
            model = self.deploy(model)
        if self.name == "torch":

            def run_torch() -> Any:
                previous = torch.get_num_threads()
                torch.set_num_threads(threads)
                try:
                    with eval_mode(model), torch.inference_mode():
                        return call_model(model, example_inputs, forward_fn)
                finally:
                    torch.set_num_threads(previous)

            return run_torch
        if forward_fn is not None:
            raise InvalidOptionError(
                f"runtime 'onnxruntime' exports {type(model).__name__} by calling it; a forward_fn cannot be exported "
                "(use runtime='torch')"
            )
        return _onnx_runner(model, example_inputs, threads, self.spin_wait)

    def session_options(self) -> Any:
        """The ``onnxruntime.SessionOptions`` to open the shipped model with: what every timing here used
        (:func:`session_options` with this runtime's threads and ``spin_wait``).

        Raises:
            MissingExtraError: onnxruntime is not installed.
        """
        return session_options(self.thread_count(), spin_wait=self.spin_wait)

    def describe(self) -> dict[str, Any]:
        """Plain data: name, threads (resolved), block, spin_wait and the deploy rewrite's name (or ``None``)."""
        deploy = None if self.deploy is None else getattr(self.deploy, "__name__", type(self.deploy).__name__)
        return {
            "name": self.name,
            "threads": self.thread_count(),
            "block": self.channel_block,
            "spin_wait": self.spin_wait,
            "deploy": deploy,
        }


def resolve_runtime(runtime: str | Runtime | None) -> Runtime:
    """A :class:`Runtime` from a name, a Runtime, or ``None`` (:data:`DEFAULT_RUNTIME`).

    Raises:
        InvalidOptionError: an unknown name (the message lists the valid ones).
        OptionTypeError: neither a string nor a Runtime.
    """
    if runtime is None:
        return Runtime(DEFAULT_RUNTIME)
    if isinstance(runtime, Runtime):
        return runtime
    if isinstance(runtime, str):
        return Runtime(runtime)
    raise OptionTypeError(f"runtime must be a name in {list(RUNTIMES)} or a Runtime, got {type(runtime).__name__}")


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise MissingExtraError(
            "runtime 'onnxruntime' needs onnxruntime to time models: pip install 'grouppruner[onnx]' "
            "(or plan for runtime='torch')"
        ) from error
    return onnxruntime


def session_options(threads: int, *, spin_wait: bool = DEFAULT_SPIN_WAIT) -> Any:
    """The ``onnxruntime.SessionOptions`` a deployment would open a model with: ``threads`` intra-op threads, one
    inter-op thread, sequential execution, every graph optimisation, and pool threads that spin while idle only
    with ``spin_wait`` (what every latency here is measured with; see :data:`DEFAULT_SPIN_WAIT`).

    Raises:
        MissingExtraError: onnxruntime is not installed.
    """
    ort = _require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    spin = "1" if spin_wait else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def onnx_session(data: bytes | str, threads: int, *, spin_wait: bool = DEFAULT_SPIN_WAIT) -> Any:
    """An onnxruntime CPU ``InferenceSession`` for serialized ONNX ``data`` (or an ``.onnx`` path) with
    :func:`session_options`.

    Raises:
        MissingExtraError: onnxruntime is not installed.
    """
    ort = _require_onnxruntime()
    options = session_options(threads, spin_wait=spin_wait)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _onnx_runner(model: nn.Module, example_inputs: Any, threads: int, spin_wait: bool) -> Runner:
    from .export import export_onnx  # export imports profile; kept out of this module's import time

    _require_onnxruntime()
    args, kwargs = split_inputs(example_inputs)
    if kwargs:
        raise InvalidOptionError("runtime 'onnxruntime': keyword example inputs cannot be exported; pass tensors")
    data = export_onnx(model, example_inputs, check=False)
    session = onnx_session(data, threads, spin_wait=spin_wait)
    feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(session.get_inputs(), args, strict=True)}
    return lambda: session.run(None, feeds)


@dataclass
class LatencyComparison:
    """Interleaved latencies of several models in one runtime (:func:`compare_latency`).

    Attributes:
        runtime: runtime name.
        threads: intra-op threads.
        block: the runtime's channel block.
        seconds: per model, the median over rounds of its fastest call in the round.
        ratios: per model, the median over rounds of its time / the first model's time in the same round
            (1.0 for the first model).
        rounds: rounds timed.
        load_average: the 1-minute load average before and after (``os.getloadavg()``, 0 where unknown).
    """

    runtime: str
    threads: int
    block: int
    seconds: list[float]
    ratios: list[float]
    rounds: int
    load_average: tuple[float, float] = (0.0, 0.0)
    samples: list[list[float]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable), without the raw samples."""
        data = asdict(self)
        data.pop("samples")
        data["load_average"] = list(self.load_average)
        return data


def _load_average() -> float:
    try:
        return float(os.getloadavg()[0])
    except OSError:  # not available on this platform
        return 0.0


def compare_latency(
    runners: Sequence[Runner],
    *,
    runtime: Runtime | None = None,
    rounds: int = 15,
    calls: int = 3,
    min_call_s: float = 0.0,
) -> LatencyComparison:
    """Time ``runners`` in turns and report medians and ratios to the first one (see module doc).

    Args:
        runners: zero-argument forward passes, e.g. ``[runtime.runner(dense, x), runtime.runner(pruned, x)]``.
        runtime: what they run in (recorded; default ``Runtime("torch")`` with the current threads).
        rounds: rounds; each runner gets ``calls`` timed calls per round, the order rotating every round.
        calls: calls per runner per round; the fastest counts.
        min_call_s: repeat a call until it lasts this long (tiny models, timer resolution).

    Returns:
        A :class:`LatencyComparison`.

    Raises:
        InvalidOptionError: no runner, ``rounds`` or ``calls`` below 1.
    """
    if not runners or rounds < 1 or calls < 1:
        raise InvalidOptionError(
            f"compare_latency needs runners, rounds >= 1 and calls >= 1 (got {len(runners)}, {rounds}, {calls})"
        )
    runtime = runtime or Runtime("torch")
    inner = []
    for run in runners:  # warm-up (allocator, kernel selection) and the inner repeat count
        run()
        start = time.perf_counter()
        run()
        inner.append(max(1, int(min_call_s / max(time.perf_counter() - start, 1e-7)) + 1) if min_call_s > 0 else 1)
    load_before = _load_average()
    samples: list[list[float]] = [[] for _ in runners]
    for index in range(rounds):
        order = list(range(len(runners)))
        order = order[index % len(order) :] + order[: index % len(order)]
        for k in order:
            best = float("inf")
            for _ in range(calls):
                start = time.perf_counter()
                for _ in range(inner[k]):
                    runners[k]()
                best = min(best, (time.perf_counter() - start) / inner[k])
            samples[k].append(best)
    ratios = [statistics.median(s / b for s, b in zip(mine, samples[0], strict=True)) for mine in samples]
    return LatencyComparison(
        runtime=runtime.name,
        threads=runtime.thread_count(),
        block=runtime.channel_block,
        seconds=[statistics.median(s) for s in samples],
        ratios=ratios,
        rounds=rounds,
        load_average=(load_before, _load_average()),
        samples=samples,
    )
