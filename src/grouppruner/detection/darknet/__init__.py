"""Darknet in and out: compress a detector given as a darknet ``.cfg`` + ``.weights`` and hand it back in the
same form.

- :func:`from_darknet` parses a cfg (:mod:`.cfg`), builds the :class:`DarknetModel` it describes (:mod:`.model`)
  and loads its weights (:mod:`.weights`); the model follows the contract of the built-in YOLOv4, so
  ``ChannelGraph``, ``BNSparsity``, ``GroupPruner``, ``AttentionDistiller`` and the recipe run on it unchanged;
- :func:`to_darknet` writes a pruned model back as a cfg with the pruned widths and a weights file (:mod:`.convert`);
- :func:`yolov4_state_dict` maps ``yolov4.cfg``'s layers onto the built-in :func:`~grouppruner.detection.yolov4`
  (:mod:`.reference`);
- :mod:`.recipe` connects a cfg to the three-stage recipe and the command line.
"""

from __future__ import annotations

from .cfg import Section, format_cfg, parse_cfg, parse_cfg_text
from .convert import from_darknet, to_darknet
from .model import DarknetModel
from .reference import yolov4_state_dict
from .weights import WeightsHeader, read_header, read_weights, weights_floats, write_weights

__all__ = [
    "DarknetModel",
    "Section",
    "WeightsHeader",
    "format_cfg",
    "from_darknet",
    "parse_cfg",
    "parse_cfg_text",
    "read_header",
    "read_weights",
    "to_darknet",
    "weights_floats",
    "write_weights",
    "yolov4_state_dict",
]
