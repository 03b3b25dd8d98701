"""Errors the store raises.  The CLI boundary (loop/cli_store.py) turns them
into loop.errors.UserError with a fix; the store itself imports nothing of ours."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class NotFound(StoreError, LookupError):
    """A run, iteration, example or rationale that does not exist."""


class Ambiguous(StoreError, LookupError):
    """An id prefix that matches more than one row."""


class Conflict(StoreError, ValueError):
    """A write that contradicts what is stored (e.g. a dataset version written
    into iterations a replayed run inherits from its parent)."""
