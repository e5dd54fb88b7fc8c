"""Errors raised at pdserve's edges: each names the problem and what to do about it."""

from __future__ import annotations


class PdserveError(Exception):
    """Base class for every error pdserve raises on purpose."""


class ModelLoadError(PdserveError):
    """A model directory is missing, incomplete or of an architecture pdserve does not serve."""


class InvalidRequestError(PdserveError, ValueError):
    """A request (prompt or sampling parameters) cannot be served as given."""


class KvLayoutMismatchError(PdserveError, ValueError):
    """Imported KV tensors do not match this engine's model or cache layout."""


class KvCapacityError(PdserveError):
    """No free KV blocks for the request right now; try another worker or later."""


class ProtocolError(PdserveError, ValueError):
    """A message from another service is malformed, of an unknown version or type."""


class KvTransferError(PdserveError):
    """A KV transfer over UCX failed: refused ticket, wrong sizes, timeout or a dead peer."""
