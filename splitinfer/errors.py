"""One hierarchy for every error the project raises on purpose.

Callers catch `SplitInferError` to catch them all; each subclass also keeps the builtin base it
always had (ValueError for bad input), so existing `except ValueError` code still works. CLIs
turn these into one line and exit code 2; the cloud turns them into one JSON shape.
"""
from __future__ import annotations


class SplitInferError(Exception):
    """Base of the project's errors; the message says what is wrong and how to fix it."""


class BundleError(SplitInferError, ValueError):
    """A bundle is missing, of another version, or does not match its files."""


class FormatError(BundleError):
    """A bundle file is malformed or of a version this build does not read."""


class PackingError(SplitInferError, ValueError):
    """A payload or argument that the codec cannot pack or unpack (the message says where)."""


class CloudError(SplitInferError):
    """The cloud did not answer usefully; `kind` says how (for fallback and metrics)."""

    KINDS = ("unreachable", "timeout", "server", "rejected", "tls")

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def retryable(self) -> bool:
        """Worth trying the cloud again later (as opposed to a request the server refuses)."""
        return self.kind != "rejected"
