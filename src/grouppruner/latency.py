"""A measured latency model: what one forward pass costs on this device, as a function of every layer's width.

MACs are a poor proxy for wall-clock time: normalisation, activations and the memory traffic of concat / upsample /
residual adds do not appear in them, and a convolution's speed per MAC depends on its shape. The
:class:`LatencyModel` is measured instead, once per device, thread count, dtype and input shape:

- every convolution is timed in isolation together with the modules that consume its output one after the other
  (its BatchNorm and activation: its *unit*), on an input of the shape it sees in the model, at a few
  ``(C_in, C_out)`` widths; a non-negative fit ``t = a + b * C_in + c * C_out + d * C_in * C_out`` (seconds)
  interpolates between them, so the predicted time never grows when a width shrinks;
- the whole model is timed once; what the units do not explain (the residual: element-wise ops written in
  ``forward()``, concatenations, upsampling, Python overhead) is kept and scaled with the number of conv output
  elements, the memory those ops move.

The units are timed in the runtime the model will ship on (:class:`~grouppruner.runtime.Runtime`): eager PyTorch,
or onnxruntime's CPU execution provider, where every unit is exported to a small ONNX graph (BatchNorm folded, as
the deployment export does) and run in an ``InferenceSession``. A runtime with a channel block (onnxruntime: 8 with
AVX2, 16 with AVX-512) has its fast kernels only at widths on the block, so there the fit uses widths on the block,
and a few widths off it give the unit's *off-block factor*: the measured time off the block over the fit's
prediction. A prediction at a width off the block is multiplied by it, so the budget solver sees what rounding
buys.

The model is plain data (:meth:`LatencyModel.state_dict`) and is cached to a JSON file (:meth:`save` /
:meth:`load`) whose :class:`LatencyKey` must match where it is used: a cache measured for another device, thread
count, dtype or input shape raises :class:`LatencyCacheError` instead of predicting nonsense.

The budget solver uses :meth:`LatencyModel.predictor` through ``GroupPruner.plan(target_latency=...)``.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import statistics
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from dataclasses import replace as dataclass_replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._utils.calls import ForwardFn, call_model, eval_mode, model_device, synchronize, tensors_in
from ._utils.errors import GroupPrunerError, InvalidOptionError
from ._utils.fitting import nonnegative_lstsq, unit_points
from ._utils.modules import is_depthwise
from ._utils.onnx_units import unit_onnx
from .profile import measure_latency
from .runtime import Runtime, onnx_session, resolve_runtime

__all__ = ["LatencyCacheError", "LatencyKey", "LatencyModel", "LayerLatency", "device_name"]

logger = logging.getLogger(__name__)

_FORMAT = 1
# (C_in, C_out) width fractions each unit is timed at: the diagonal (uniform pruning) plus two off-diagonal points
# so that the C_in and C_out terms of the fit are told apart.
_WIDTHS: tuple[tuple[float, float], ...] = ((1.0, 1.0), (0.75, 0.75), (0.5, 0.5), (0.25, 0.25), (1.0, 0.5), (0.5, 1.0))
_MIN_SAMPLE_S = 2e-3  # a timing sample repeats a unit until it lasts this long (timer resolution, noise)

Removed = Mapping[tuple[str, str], int]
"""Channels removed per ``(module name, "out" | "in")``, as in :class:`grouppruner.pruning.budget.CostModel`."""


class LatencyCacheError(GroupPrunerError, ValueError):
    """A latency model (or its cache file) was measured for another device, thread count, dtype, input or model."""


def device_name(device: torch.device | str = "cpu") -> str:
    """A stable description of the hardware a latency was measured on, e.g. ``cpu:x86_64:AMD EPYC ...:AVX2``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model_name = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux: platform.processor() is the best description there is
        pass
    return f"cpu:{platform.machine()}:{model_name}:{torch.backends.cpu.get_cpu_capability()}"


@dataclass(frozen=True)
class LatencyKey:
    """Where a latency model is valid.

    Attributes:
        device: :func:`device_name` of the device.
        threads: ``torch.get_num_threads()`` during the measurement.
        dtype: dtype of the model's parameters, e.g. ``"torch.float32"``.
        input_shapes: shapes of the example inputs, e.g. ``[[1, 3, 416, 416]]``.
        runtime: the runtime the units were timed in (``"torch"`` or ``"onnxruntime"``).
        block: the runtime's channel block (1: any width is as fast).
        spin_wait: onnxruntime: whether its idle pool threads spun (always ``False`` for eager PyTorch).
        deploy: the name of the deployment rewrite the whole model was timed through (``None``: as it is).
    """

    device: str
    threads: int
    dtype: str
    input_shapes: list[list[int]]
    runtime: str = "torch"
    block: int = 1
    spin_wait: bool = False
    deploy: str | None = None

    def mismatch(self, other: LatencyKey) -> list[str]:
        """Human-readable differences ``'field: self vs other'`` (empty when the keys match)."""
        return [
            f"{name}: {getattr(self, name)!r} vs {getattr(other, name)!r}"
            for name in ("device", "threads", "dtype", "input_shapes", "runtime", "block", "spin_wait", "deploy")
            if getattr(self, name) != getattr(other, name)
        ]


@dataclass
class LayerLatency:
    """Fitted time of one convolution unit (conv + the BatchNorm / activation that follow it).

    Attributes:
        name: qualified name of the convolution.
        in_channels: C_in at measurement time.
        out_channels: C_out at measurement time.
        depthwise: one filter per channel (C_in and C_out shrink together; only the diagonal is timed).
        coef: ``(a, b, c, d)`` in seconds, all >= 0: ``t = a + b * C_in + c * C_out + d * C_in * C_out``.
        samples: the timed points ``[C_in, C_out, seconds]``, kept so that the fit can be checked.
        block: the runtime's channel block; widths off it are predicted ``off_block`` times slower.
        off_block: measured time off the block over the fit's prediction (1.0 when not measured).
    """

    name: str
    in_channels: int
    out_channels: int
    depthwise: bool
    coef: tuple[float, float, float, float]
    samples: list[tuple[int, int, float]] = field(default_factory=list)
    block: int = 1
    off_block: float = 1.0

    def on_block(self, in_channels: int, out_channels: int) -> bool:
        """Both widths on the block (a width below the block cannot be blocked and counts as on it)."""
        return all(c % self.block == 0 or c < self.block for c in (in_channels, out_channels))

    def predict(self, in_channels: int, out_channels: int) -> float:
        """Seconds for this unit at the given widths (non-decreasing in both among widths on the block)."""
        a, b, c, d = self.coef
        seconds = a + b * in_channels + c * out_channels + d * in_channels * out_channels
        return seconds if self.on_block(in_channels, out_channels) else seconds * self.off_block


@dataclass(frozen=True)
class _Unit:
    conv: nn.modules.conv._ConvNd
    tail: tuple[nn.Module, ...]  # modules applied one after the other to the conv's output (BN, activation)
    input_shape: tuple[int, ...]  # (N, C_in, *spatial) seen in the model
    out_elements_per_channel: int  # N * prod(output spatial)


class LatencyModel:
    """Predicted forward latency of a model from its layer widths, measured on this device.

    Build one with :meth:`measure` (or :meth:`load` a cache); predict with :meth:`predict` (a model, possibly
    pruned since) or :meth:`predictor` (a removal, for the budget solver).

    Args:
        key: where the measurement is valid.
        layers: fitted conv units by conv name.
        dense_s: measured latency of the whole model at measurement time (seconds).
        residual_s: ``dense_s`` minus the summed unit predictions at full width; scaled by the conv output
            elements of the model being predicted.
        out_elements: per conv name, output elements per output channel (``N * H_out * W_out``).
    """

    def __init__(
        self,
        *,
        key: LatencyKey,
        layers: Mapping[str, LayerLatency],
        dense_s: float,
        residual_s: float,
        out_elements: Mapping[str, int],
    ) -> None:
        self.key = key
        self.layers = dict(layers)
        self.dense_s = dense_s
        self.residual_s = residual_s
        self.out_elements = dict(out_elements)
        self._dense_elements = sum(self.out_elements[n] * layer.out_channels for n, layer in self.layers.items())

    def __repr__(self) -> str:
        return (
            f"LatencyModel({len(self.layers)} conv units, dense {self.dense_s * 1e3:.2f} ms, residual "
            f"{self.residual_s * 1e3:.2f} ms, {self.key.device}, {self.key.threads} threads)"
        )

    # ------------------------------------------------------------------ measuring
    @classmethod
    def measure(
        cls,
        model: nn.Module,
        example_inputs: Any,
        *,
        threads: int | None = None,
        repeats: int = 5,
        forward_fn: ForwardFn | None = None,
        cache: str | Path | None = None,
        runtime: str | Runtime = "torch",
    ) -> LatencyModel:
        """Time every conv unit of ``model`` at a few widths and the whole model once, in ``runtime``.

        Args:
            model: the model (eval mode is used; its train/eval flags are restored).
            example_inputs: the inputs the latency is for, e.g. a (1, 3, 416, 416) tensor; batch size and image
                size matter.
            threads: ``torch.set_num_threads`` during the measurement (restored afterwards); default: current.
            repeats: timing samples per point (the median is used).
            forward_fn: ``forward_fn(model, example_inputs)`` instead of calling the model.
            cache: a JSON file. If it exists it is loaded (and must match this device, threads, dtype, input
                shape, runtime and model, else :class:`LatencyCacheError`); otherwise the measurement is written to
                it.
            runtime: where the units and the whole model are timed (a name or a
                :class:`~grouppruner.runtime.Runtime`; its ``threads``, when set, override ``threads``).

        Returns:
            The fitted model.

        Raises:
            LatencyCacheError: the cache file is for another setting or model.
            ValueError: the model has no convolution.
        """
        runtime = resolve_runtime(runtime)
        if runtime.name == "onnxruntime" and forward_fn is not None:
            raise InvalidOptionError("LatencyModel.measure: runtime 'onnxruntime' exports the model; drop forward_fn")
        previous = torch.get_num_threads()
        threads = runtime.threads if runtime.threads is not None else threads
        if threads is not None:
            torch.set_num_threads(threads)
        runtime = dataclass_replace(runtime, threads=torch.get_num_threads())
        try:
            key = _key_for(model, example_inputs, runtime)
            if cache is not None and Path(cache).exists():
                loaded = cls.load(cache, expect=key)
                loaded.check_model(model)
                logger.info("latency model loaded from %s", cache)
                return loaded
            units = _find_units(model, example_inputs, forward_fn)
            if not units:
                raise InvalidOptionError(f"LatencyModel.measure: {type(model).__name__} has no convolution to time")
            start = time.perf_counter()
            timed: dict[tuple[Any, ...], LayerLatency] = {}  # units of one shape are timed once
            layers = {name: _fit_unit(name, unit, repeats, runtime, timed) for name, unit in units.items()}
            if runtime.name == "onnxruntime" or runtime.deploy is not None:  # the graph that ships, in its runtime
                run = runtime.runner(model, example_inputs, forward_fn)
                dense_s = _time_call(run, max(repeats, 3), model_device(model))
            elif forward_fn is None:
                dense_s = measure_latency(model, example_inputs, repeats=max(repeats, 3), warmup=1)
            else:
                dense_s = _time_call(
                    lambda: call_model(model, example_inputs, forward_fn), max(repeats, 3), model_device(model)
                )
            full = sum(layer.predict(layer.in_channels, layer.out_channels) for layer in layers.values())
            result = cls(
                key=key,
                layers=layers,
                dense_s=dense_s,
                residual_s=dense_s - full,
                out_elements={name: unit.out_elements_per_channel for name, unit in units.items()},
            )
            logger.info("%r measured in %.1f s", result, time.perf_counter() - start)
        finally:
            torch.set_num_threads(previous)
        if cache is not None:
            result.save(cache)
        return result

    # ------------------------------------------------------------------ predicting
    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`LatencyCacheError` unless every timed conv exists in ``model`` (a pruned copy is fine)."""
        convs = {n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}
        missing = sorted(set(self.layers) - convs)
        if missing:
            raise LatencyCacheError(
                f"this latency model was measured on another model: {len(missing)} timed convolution(s) are "
                f"missing, e.g. {missing[:3]}; measure it again for this model"
            )

    def predict(self, model: nn.Module) -> float:
        """Predicted latency in seconds of ``model`` (the measured one, or a pruned version of it)."""
        self.check_model(model)
        widths = {}
        for name in self.layers:
            conv = model.get_submodule(name)
            assert isinstance(conv, nn.modules.conv._ConvNd)
            widths[name] = (conv.in_channels, conv.out_channels)
        return self._predict_widths(widths)

    def predictor(self, model: nn.Module) -> Callable[[Removed], float]:
        """``predict(removed) -> seconds`` for channel removals from ``model`` in its current state.

        ``removed[(conv name, "out" | "in")]`` is the number of channels removed there (other keys are ignored).
        """
        self.check_model(model)
        base: dict[str, tuple[int, int]] = {}
        for name in self.layers:
            conv = model.get_submodule(name)
            assert isinstance(conv, nn.modules.conv._ConvNd)
            base[name] = (conv.in_channels, conv.out_channels)

        def predict(removed: Removed) -> float:
            widths = {}
            for name, (cin, cout) in base.items():
                if self.layers[name].depthwise:
                    gone = max(removed.get((name, "in"), 0), removed.get((name, "out"), 0))
                    widths[name] = (cin - gone, cout - gone)
                else:
                    widths[name] = (cin - removed.get((name, "in"), 0), cout - removed.get((name, "out"), 0))
            return self._predict_widths(widths)

        return predict

    def _predict_widths(self, widths: Mapping[str, tuple[int, int]]) -> float:
        units = sum(self.layers[name].predict(cin, cout) for name, (cin, cout) in widths.items())
        elements = sum(self.out_elements[name] * cout for name, (_, cout) in widths.items())
        return units + self.residual_s * elements / max(self._dense_elements, 1)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain-data state (JSON-serialisable)."""
        return {
            "format": _FORMAT,
            "key": asdict(self.key),
            "dense_s": self.dense_s,
            "residual_s": self.residual_s,
            "out_elements": self.out_elements,
            "layers": [asdict(layer) for layer in self.layers.values()],
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> LatencyModel:
        """Inverse of :meth:`state_dict`."""
        if state.get("format") != _FORMAT:
            raise LatencyCacheError(f"unknown latency model format {state.get('format')!r} (expected {_FORMAT})")
        layers = {}
        for item in state["layers"]:
            layers[item["name"]] = LayerLatency(
                name=item["name"],
                in_channels=int(item["in_channels"]),
                out_channels=int(item["out_channels"]),
                depthwise=bool(item["depthwise"]),
                coef=tuple(float(c) for c in item["coef"]),  # type: ignore[arg-type]  # 4 floats by format
                samples=[(int(ci), int(co), float(t)) for ci, co, t in item["samples"]],
                block=int(item.get("block", 1)),
                off_block=float(item.get("off_block", 1.0)),
            )
        key = state["key"]
        runtime = str(key.get("runtime", "torch"))  # caches written before runtimes existed were eager PyTorch
        return cls(
            key=LatencyKey(
                key["device"],
                int(key["threads"]),
                key["dtype"],
                [list(s) for s in key["input_shapes"]],
                runtime,
                int(key.get("block", 1)),
                # caches written before spin_wait existed: onnxruntime's own default, spinning
                bool(key.get("spin_wait", runtime == "onnxruntime")),
                key.get("deploy"),
            ),
            layers=layers,
            dense_s=float(state["dense_s"]),
            residual_s=float(state["residual_s"]),
            out_elements={k: int(v) for k, v in state["out_elements"].items()},
        )

    def save(self, path: str | Path) -> None:
        """Write the model to a JSON file."""
        Path(path).write_text(json.dumps(self.state_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path, *, expect: LatencyKey | None = None) -> LatencyModel:
        """Read a model written by :meth:`save`.

        Args:
            path: the JSON file.
            expect: if given, the key the model must have (e.g. :meth:`key_for` of the model and inputs at hand).

        Raises:
            LatencyCacheError: another format, or a key that differs from ``expect`` (the message lists how).
        """
        try:
            state = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise LatencyCacheError(f"latency cache {path} is not valid JSON: {error}") from error
        model = cls.from_state_dict(state)
        if expect is not None:
            differences = model.key.mismatch(expect)
            if differences:
                raise LatencyCacheError(
                    f"latency cache {path} was measured for another setting ({'; '.join(differences)}; cached vs "
                    "here); delete it or use another cache path to measure again"
                )
        return model

    @staticmethod
    def key_for(model: nn.Module, example_inputs: Any, runtime: str | Runtime = "torch") -> LatencyKey:
        """The :class:`LatencyKey` of a measurement of ``model`` on ``example_inputs`` in ``runtime`` with the
        current threads (or the runtime's)."""
        return _key_for(model, example_inputs, resolve_runtime(runtime))


# ---------------------------------------------------------------------- measurement helpers
def _key_for(model: nn.Module, example_inputs: Any, runtime: Runtime) -> LatencyKey:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = str(param.dtype) if param is not None else str(torch.get_default_dtype())
    shapes = [list(t.shape) for t in tensors_in(example_inputs)]
    threads = runtime.threads if runtime.threads is not None else torch.get_num_threads()
    spin = runtime.spin_wait and runtime.name == "onnxruntime"
    deploy = runtime.describe()["deploy"]
    return LatencyKey(device_name(device), threads, dtype, shapes, runtime.name, runtime.channel_block, spin, deploy)


def _find_units(model: nn.Module, example_inputs: Any, forward_fn: ForwardFn | None) -> dict[str, _Unit]:
    """Each conv, its input shape, and the chain of BN / parameter-free modules applied straight to its output."""
    names = {module: name for name, module in model.named_modules()}
    convs: dict[str, tuple[nn.modules.conv._ConvNd, tuple[int, ...], int]] = {}
    tails: dict[str, list[nn.Module]] = {}
    # id(output tensor) -> (weak ref, conv whose unit produced it): a module whose input is that tensor extends it
    produced: dict[int, tuple[weakref.ref[torch.Tensor], str]] = {}
    handles = []

    def on_forward(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            return
        if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
            name = names[module]
            if name not in convs and args and isinstance(args[0], torch.Tensor):
                convs[name] = (module, tuple(args[0].shape), output.numel() // max(output.shape[1], 1))
                tails[name] = []
                produced[id(output)] = (weakref.ref(output), name)
            return
        own_params = list(module.parameters(recurse=False))
        extends = isinstance(module, _BatchNorm) or (not own_params and not list(module.children()))
        if extends and args and isinstance(args[0], torch.Tensor) and id(args[0]) in produced:
            ref, owner = produced[id(args[0])]
            if ref() is args[0] and module not in tails[owner] and output.shape == args[0].shape:
                tails[owner].append(module)
                produced[id(output)] = (weakref.ref(output), owner)

    for module in model.modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(on_forward))
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, example_inputs, forward_fn)
    finally:
        for handle in handles:
            handle.remove()
    return {name: _Unit(conv, tuple(tails[name]), shape, elements) for name, (conv, shape, elements) in convs.items()}


def _resized_unit(unit: _Unit, cin: int, cout: int) -> tuple[nn.Module, torch.Tensor]:
    """A standalone copy of the unit at widths (cin, cout) with random weights, and an input for it."""
    conv = unit.conv
    groups = cin if is_depthwise(conv) else conv.groups
    param = conv.weight
    new_conv = type(conv)(  # type: ignore[call-arg]  # Conv1d/2d/3d, not the abstract _ConvNd
        cin,
        cout,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=param.device,
        dtype=param.dtype,
    )
    layers: list[nn.Module] = [new_conv]
    for module in unit.tail:
        if isinstance(module, _BatchNorm):
            bn = type(module)(cout, eps=module.eps, device=param.device, dtype=param.dtype)
            # the running statistics of a trained BN: values, not shapes, cannot change the time of an eval BN
            layers.append(bn)
        else:
            layers.append(module)  # parameter-free, shared safely
    x = torch.randn(unit.input_shape[0], cin, *unit.input_shape[2:], device=param.device, dtype=param.dtype)
    return nn.Sequential(*layers).eval(), x


def _time_call(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median seconds of one ``fn()`` call on ``device``; each sample repeats it until it lasts ``_MIN_SAMPLE_S``."""
    fn()  # warm-up: allocator and kernel selection
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    single = time.perf_counter() - start
    inner = max(1, math.ceil(_MIN_SAMPLE_S / max(single, 1e-7)))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def _time_unit(unit: _Unit, cin: int, cout: int, repeats: int, runtime: Runtime) -> float:
    block, x = _resized_unit(unit, cin, cout)
    if runtime.name == "torch":
        with torch.inference_mode():
            return _time_call(partial(block, x), repeats, x.device)
    conv, *tail = block.children()
    assert isinstance(conv, nn.modules.conv._ConvNd)
    data = unit_onnx(conv, tuple(tail), tuple(x.shape))
    if data is None:  # a part without a direct ONNX form here: the deployment export, slower to make
        from .export import export_onnx  # export imports profile, which this module's import order puts first

        data = export_onnx(block, x, check=False)
    session = onnx_session(data, runtime.thread_count(), spin_wait=runtime.spin_wait)
    feeds = {session.get_inputs()[0].name: x.numpy()}
    return _time_call(partial(session.run, None, feeds), repeats, x.device)


def _fit_unit(
    name: str, unit: _Unit, repeats: int, runtime: Runtime, timed: dict[tuple[Any, ...], LayerLatency]
) -> LayerLatency:
    conv = unit.conv
    depthwise = is_depthwise(conv)
    signature = (
        type(conv).__name__,
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        unit.input_shape,
        tuple(type(m).__name__ for m in unit.tail),
    )
    if signature in timed:
        return dataclass_replace(timed[signature], name=name)
    block = runtime.channel_block
    on, off = unit_points(conv, block, _WIDTHS)
    samples = [(cin, cout, _time_unit(unit, cin, cout, repeats, runtime)) for cin, cout in sorted(on, reverse=True)]
    ci = np.array([s[0] for s in samples], dtype=np.float64)
    co = np.array([s[1] for s in samples], dtype=np.float64)
    t = np.array([s[2] for s in samples], dtype=np.float64)
    if depthwise:
        features = np.stack([np.ones_like(ci), co], axis=1)
    else:
        features = np.stack([np.ones_like(ci), ci, co, ci * co], axis=1)
    # Non-negative least squares on relative errors (rows scaled by 1/t): every term >= 0 keeps the prediction
    # monotone in width, and relative weighting stops the widest point from dominating the fit.
    weights = 1.0 / np.maximum(t, 1e-9)
    solution = nonnegative_lstsq(features * weights[:, None], t * weights)
    coef = (float(solution[0]), 0.0, float(solution[1]), 0.0) if depthwise else tuple(float(c) for c in solution)
    layer = LayerLatency(
        name=name,
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        depthwise=depthwise,
        coef=coef,  # type: ignore[arg-type]  # four floats in both branches
        samples=samples,
        block=block,
    )
    if off:
        extra = [(cin, cout, _time_unit(unit, cin, cout, repeats, runtime)) for cin, cout in sorted(off, reverse=True)]
        on_block = LayerLatency(name, conv.in_channels, conv.out_channels, depthwise, layer.coef, block=1)
        layer.off_block = float(np.median([sec / max(on_block.predict(ci_, co_), 1e-12) for ci_, co_, sec in extra]))
        layer.samples = samples + extra
    timed[signature] = layer
    return layer
