"""Helpers every stage shares, written once.

- :mod:`.errors`: the exception family (:class:`GroupPrunerError` and its subclasses);
- :mod:`.calls`: calling a model on example inputs (one rule for tensors, sequences and mappings);
- :mod:`.names`: resolving user-given layer names (exact, glob, close-match suggestions);
- :mod:`.wrappers`: seeing through DDP / DataParallel / ``torch.compile`` wrappers.

Nothing here is public API; the public names are re-exported by the stage packages and by ``grouppruner``.
"""
