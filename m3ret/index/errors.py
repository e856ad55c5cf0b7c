"""Errors of the index a caller can act on (kept apart from the client so catching them does not import pymilvus)."""


class IndexNotReadyError(RuntimeError):
    """Searching before any collection was published under the alias."""
