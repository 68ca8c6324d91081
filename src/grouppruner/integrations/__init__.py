"""Adapters to the training frameworks users already have, each behind its own extra and imported lazily.

- :mod:`grouppruner.integrations.ultralytics` (extra ``grouppruner[ultralytics]``): sparse training, group
  pruning and distilled recovery of Ultralytics YOLO models inside the stock Ultralytics trainer.

The core (``import grouppruner``) never imports an integration; an integration uses the core's public API.
"""
