"""Darknet ``.cfg`` files: parsing into :class:`Section` s, checking every key, and writing them back.

A cfg is a list of sections (``[net]``, ``[convolutional]``, ...), each a list of ``key=value`` options. The
reader follows darknet's own ``read_cfg``: whitespace anywhere in a line is removed, lines starting with ``#``
or ``;`` are comments. Unlike darknet, which silently ignores keys it does not read, every key is checked here
against what darknet reads for that section (``src/parser.c``):

- keys that define the network (``filters``, ``size``, ``layers``, ``mask`` ...) are interpreted;
- training-only keys (``jitter``, ``ignore_thresh``, ``iou_loss``, ``max_delta``, the ``[net]`` hyper-parameters
  ...) are kept as they are and written back unchanged;
- keys that change the computation in a way this package does not implement (``dilation``, ``xnor``,
  ``stride_x`` ...) and keys darknet does not know are refused with the file, the line and the key.

:func:`parse_cfg` reads a file, :func:`format_cfg` writes sections back as text.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..._utils.errors import DataError
from ..._utils.names import did_you_mean

__all__ = ["SUPPORTED", "TRAINING_ONLY", "Section", "format_cfg", "parse_cfg", "parse_cfg_text"]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Keys each section may hold that change what the network computes; all are interpreted.
SUPPORTED: dict[str, frozenset[str]] = {
    "net": frozenset({"width", "height", "channels"}),
    "convolutional": frozenset(
        {"batch_normalize", "filters", "size", "stride", "pad", "padding", "groups", "activation"}
    ),
    "route": frozenset({"layers", "groups", "group_id"}),
    "shortcut": frozenset({"from", "activation"}),
    "maxpool": frozenset({"size", "stride", "padding"}),
    "upsample": frozenset({"stride"}),
    "yolo": frozenset({"mask", "anchors", "classes", "num", "scale_x_y", "new_coords"}),
}

#: Keys darknet reads only while training (or for its own display and bookkeeping): kept, never interpreted.
TRAINING_ONLY: dict[str, frozenset[str]] = {
    "net": _words(
        """B1 B2 adam adversarial_lr angle aspect attention augment_speed badlabels_rejection_percentage batch
        blur burn_in contrastive contrastive_color contrastive_jit_flip cutmix decay dynamic_minibatch ema_alpha
        eps equidistant_point exposure flip gamma gaussian_noise hue inputs label_smooth_eps learning_rate
        learning_rate_min letter_box loss_scale max_batches max_chart_loss max_crop min_crop mixup momentum
        mosaic mosaic_bound num_sigmas_reject_badlabels optimized_memory policy power resize_step saturation
        scale scales seq_scales sequential_subdivisions sgdr_cycle sgdr_mult step steps subdivisions time_steps
        track try_fix_nan unsupervised use_cuda_graph weights_reject_freq workspace_size_limit_MB"""
    ),
    "convolutional": frozenset(),
    "route": frozenset(),
    "shortcut": frozenset(),
    "maxpool": frozenset(),
    "upsample": frozenset(),
    "yolo": _words(
        """beta_nms cls_normalizer counters_per_class delta_normalizer dets_for_show dets_for_track
        embedding_layer focal_loss ignore_thresh iou_loss iou_normalizer iou_thresh iou_thresh_kind jitter
        label_smooth_eps map max max_delta nms_kind obj_normalizer objectness_smooth random resize sim_thresh
        show_details track_ciou_norm track_history_size truth_thresh"""
    ),
}

#: Keys darknet knows for a section that change the computation in ways this package does not implement.
_UNSUPPORTED: dict[str, frozenset[str]] = {
    "convolutional": _words(
        """angle antialiasing assisted_excitation bin_output binary cbn coordconv dilation dot flipped grad_centr
        reverse rotate share_index stream stretch stretch_sway stride_x stride_y sway wait_stream xnor"""
    ),
    "route": frozenset({"stream", "wait_stream"}),
    "shortcut": frozenset({"weights_normalization", "weights_type"}),
    "maxpool": frozenset(
        {"antialiasing", "maxpool_depth", "maxpool_zero_nonmax", "out_channels", "stride_x", "stride_y"}
    ),
    "upsample": frozenset({"scale"}),
    "yolo": frozenset(),
    "net": frozenset(),
}

#: Darknet's other spellings of section names (``parser.c``: ``string_to_layer_type``).
_ALIASES = {"network": "net", "conv": "convolutional", "max": "maxpool", "Gaussian_yolo": "gaussian_yolo"}


@dataclass
class Section:
    """One ``[name]`` block of a cfg.

    Attributes:
        name: the section type, aliases resolved (``"convolutional"``, ``"route"``, ...).
        options: ``key -> value`` as written (whitespace removed), in file order; training-only keys included.
        line: 1-based line of the ``[name]`` header in ``source``.
        key_lines: ``key -> line`` of each option, for error messages.
        source: the file the section was read from (``"<string>"`` for text).
    """

    name: str
    options: dict[str, str] = field(default_factory=dict)
    line: int = 0
    key_lines: dict[str, int] = field(default_factory=dict)
    source: str = "<string>"

    def where(self, key: str | None = None) -> str:
        """``"file:line"`` of the section header or of one of its keys."""
        line = self.key_lines.get(key, self.line) if key is not None else self.line
        return f"{self.source}:{line}"

    def get_int(self, key: str, default: int | None = None) -> int:
        """The integer value of ``key`` (``default`` when absent).

        Raises:
            DataError: ``key`` is absent without a default, or not an integer (names file, line and key).
        """
        value = self.options.get(key)
        if value is None:
            if default is None:
                raise DataError(f"{self.where()}: [{self.name}] needs {key}=")
            return default
        try:
            return int(value)
        except ValueError:
            raise DataError(f"{self.where(key)}: [{self.name}] {key}={value!r} is not an integer") from None

    def get_float(self, key: str, default: float) -> float:
        """The float value of ``key`` (``default`` when absent); a DataError naming the line if not a number."""
        value = self.options.get(key)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise DataError(f"{self.where(key)}: [{self.name}] {key}={value!r} is not a number") from None

    def get_ints(self, key: str) -> list[int]:
        """A comma-separated list of integers (empty items, as in ``1,2,``, are skipped, as darknet does)."""
        value = self.options.get(key)
        if value is None:
            raise DataError(f"{self.where()}: [{self.name}] needs {key}=")
        try:
            return [int(item) for item in value.split(",") if item]
        except ValueError:
            raise DataError(f"{self.where(key)}: [{self.name}] {key}={value!r} is not a list of integers") from None

    def get_floats(self, key: str) -> list[float]:
        """A comma-separated list of numbers."""
        value = self.options.get(key)
        if value is None:
            raise DataError(f"{self.where()}: [{self.name}] needs {key}=")
        try:
            return [float(item) for item in value.split(",") if item]
        except ValueError:
            raise DataError(f"{self.where(key)}: [{self.name}] {key}={value!r} is not a list of numbers") from None


def parse_cfg_text(text: str, source: str = "<string>") -> list[Section]:
    """Parse cfg text into sections, checking every section name and key.

    Args:
        text: the cfg's content.
        source: the file name used in error messages.

    Returns:
        The sections in file order; the first is ``[net]``.

    Raises:
        DataError: not a darknet cfg (no ``[net]`` section first, an option outside any section, a line that is
            neither a header nor ``key=value``), an unknown or unsupported section or key, or a key given twice;
            the message names the file, the line and the key.
    """
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = "".join(raw.split())  # darknet's strip(): all whitespace, anywhere in the line
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise DataError(f"{source}:{number}: {raw.strip()!r} is not a section header like [convolutional]")
            name = line[1:-1]
            name = _ALIASES.get(name, name)
            if name not in SUPPORTED:
                raise DataError(
                    f"{source}:{number}: unknown or unsupported section [{name}]{did_you_mean(name, SUPPORTED)}; "
                    f"supported: {', '.join(f'[{s}]' for s in SUPPORTED)}"
                )
            if not sections and name != "net":
                raise DataError(f"{source}:{number}: not a darknet cfg: the first section must be [net], got [{name}]")
            if sections and name == "net":
                raise DataError(f"{source}:{number}: a second [net] section")
            sections.append(Section(name, line=number, source=source))
            continue
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise DataError(f"{source}:{number}: not a darknet cfg line (neither [section] nor key=value): {raw!r}")
        if not sections:
            raise DataError(f"{source}:{number}: not a darknet cfg: option {key!r} before the first [net] section")
        section = sections[-1]
        _check_key(section, key, number)
        if key in section.options:
            raise DataError(
                f"{source}:{number}: [{section.name}] {key} given twice (first at line {section.key_lines[key]})"
            )
        section.options[key] = value
        section.key_lines[key] = number
    if not sections:
        raise DataError(f"{source}: not a darknet cfg: no [net] section")
    if len(sections) == 1:
        raise DataError(f"{source}: the cfg has no layers after [net]")
    return sections


def parse_cfg(path: str | os.PathLike[str]) -> list[Section]:
    """Read and parse a darknet cfg file (see :func:`parse_cfg_text`).

    Raises:
        FileNotFoundError: no such file.
        DataError: the file is not UTF-8 / ASCII text, or not a valid cfg (file, line and key named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: darknet cfg not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a darknet cfg (not text: {error.reason} at byte {error.start})") from None
    return parse_cfg_text(text, str(path))


def _check_key(section: Section, key: str, line: int) -> None:
    name = section.name
    if key in SUPPORTED[name] or key in TRAINING_ONLY[name]:
        return
    where = f"{section.source}:{line}"
    if key in _UNSUPPORTED[name]:
        raise DataError(f"{where}: [{name}] {key}= is a darknet option grouppruner does not implement")
    known = SUPPORTED[name] | TRAINING_ONLY[name]
    raise DataError(f"{where}: unknown key {key!r} in [{name}]{did_you_mean(key, known)}")


def format_cfg(sections: Sequence[Section]) -> str:
    """Sections as cfg text: one ``[name]`` header, then ``key=value`` lines, a blank line between sections.

    Args:
        sections: e.g. from :func:`parse_cfg`, possibly with changed ``options``.

    Returns:
        Text that :func:`parse_cfg_text` reads back into the same names and options.
    """
    blocks = []
    for section in sections:
        lines = [f"[{section.name}]", *(f"{key}={value}" for key, value in section.options.items())]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
