"""Every error cachenet raises on purpose, in one tree.

::

    CachenetError
    ├── ConfigError            a flag, option or spec that cannot be used
    ├── DatasetError           data that is missing, malformed or unreadable
    ├── ModelError             a model that cannot be built, imported or loaded
    │   └── ExportError        ONNX export failed or disagrees with torch
    ├── CalibrationError       the confidence gate cannot be calibrated
    ├── TrainingStopped        training was asked to stop (the server is shutting down)
    ├── GenerationStopped      a generation was stopped (deadline passed, caller gone)
    ├── BundleError            a cache bundle that cannot be trusted
    │   ├── ManifestError      manifest.json missing, unreadable or incomplete
    │   ├── IntegrityError     a file is missing or its sha256 does not match
    │   └── InputSpecError     an input of the wrong shape or dtype for the model
    ├── ProtocolError          a message that does not decode (bad tensor, unknown field)
    ├── QueueFullError         the server's request queue is full
    ├── EdgeTimeout            the edge agent did not answer a local call in time
    └── CloudError             a call to the cloud failed
        ├── CloudUnavailable   no connection, or the server is shutting down
        ├── CloudTimeout       the deadline passed before the answer came
        ├── CloudOverloaded    the server's queue is full (RESOURCE_EXHAUSTED)
        └── CloudRejected      the server refused the request (INVALID_ARGUMENT, ...)

Callers catch :class:`CachenetError` to handle all of them; the CLI turns them
into one-line messages and a non-zero exit status. gRPC errors become
:class:`CloudError` in one place, :mod:`cachenet.protocol.client`; ONNX Runtime's
become :class:`IntegrityError` or :class:`InputSpecError` in :mod:`cachenet.core.runtime`.
"""

from __future__ import annotations


class CachenetError(Exception):
    """Base class of every error cachenet raises on purpose."""


class ConfigError(CachenetError):
    """A flag, option or spec that cannot be used as given."""


class DatasetError(CachenetError):
    """Data that is missing, malformed or unreadable."""


class ModelError(CachenetError):
    """A model that cannot be built, imported or loaded."""


class ExportError(ModelError):
    """ONNX export failed, or the exported model disagrees with torch."""


class CalibrationError(CachenetError):
    """The confidence gate cannot be calibrated on the data given."""


class BundleError(CachenetError):
    """A cache bundle that cannot be trusted or used."""


class ManifestError(BundleError):
    """manifest.json is missing, unreadable or lacks a required field."""


class IntegrityError(BundleError):
    """A bundle file is missing, corrupted, or its sha256 does not match."""


class InputSpecError(BundleError):
    """An input tensor whose shape or dtype does not fit the model."""


class TrainingStopped(CachenetError):
    """Training was asked to stop before it finished (the server is shutting down)."""


class GenerationStopped(CachenetError):
    """A generation was stopped before it finished: its deadline passed or its caller left."""


class ProtocolError(CachenetError):
    """A message that does not decode: a bad tensor, an unknown field or operation."""


class QueueFullError(CachenetError):
    """The server's request queue is full; the caller should back off."""


class EdgeTimeout(CachenetError):
    """The edge agent did not answer a call on its local API within the timeout."""


class CloudError(CachenetError):
    """A call to the cloud server failed. ``code`` is the gRPC status name, if any."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class CloudUnavailable(CloudError):
    """No connection to the cloud, or the server is shutting down."""


class CloudTimeout(CloudError):
    """The deadline passed before the cloud answered."""


class CloudOverloaded(CloudError):
    """The cloud's queue is full (RESOURCE_EXHAUSTED)."""


class CloudRejected(CloudError):
    """The cloud refused the request as invalid or unsupported."""
