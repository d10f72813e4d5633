"""Every error cachenet raises on purpose, in one tree.

::

    CachenetError
    ├── ConfigError            a flag, option or spec that cannot be used
    ├── DatasetError           data that is missing, malformed or unreadable
    ├── ModelError             a model that cannot be built, imported or loaded
    │   └── ExportError        ONNX export failed or disagrees with torch
    ├── CalibrationError       the confidence gate cannot be calibrated
    ├── BundleError            a cache bundle that cannot be trusted
    │   ├── ManifestError      manifest.json missing, unreadable or incomplete
    │   ├── IntegrityError     a file is missing or its sha256 does not match
    │   └── InputSpecError     an input of the wrong shape or dtype for the model
    ├── ProtocolError          a message that does not decode (bad tensor, unknown field)
    ├── NonFiniteError         NaN or an infinity in data to be written as JSON
    ├── QueueFullError         the server's request queue is full
    ├── RequestRefused         a request a server refuses: the status it answers, and why
    ├── EdgeTimeout            the edge agent did not answer a local call in time
    └── CloudError             a call to the cloud failed: its status and details
        ├── CloudUnavailable   no connection, or the server is shutting down
        ├── CloudTimeout       the deadline passed before the answer came
        ├── CloudOverloaded    the server's queue is full (RESOURCE_EXHAUSTED)
        └── CloudRejected      the server refused the request (INVALID_ARGUMENT, ...)

Callers catch :class:`CachenetError` to handle all of them; the CLI and the daemons
turn them into one-line messages and a non-zero exit status. Foreign errors become
ours at one boundary each: gRPC's become :class:`CloudError` in
:mod:`cachenet.protocol.client`; ONNX Runtime's become :class:`IntegrityError` or
:class:`InputSpecError` in :mod:`cachenet.core.runtime`.

A refusal travels with its details: the server raises :class:`RequestRefused`
with a status (gRPC's code names are the vocabulary, whatever the transport), a
``reason`` (a stable token, such as ``input_shape`` or ``queue_full``) and the
``field`` of the request at fault; the client's :class:`CloudError` carries the
same three, so a caller acts on them, never on the message's text.

Not in the tree, because they are not errors: :class:`Stopped` and its kinds
(:class:`TrainingStopped`, :class:`GenerationStopped`) end work that was asked to
stop (the server is shutting down, a caller left); they derive from
:class:`Exception` alone, so ``except CachenetError`` never swallows a stop.
Standard library only.
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


class ProtocolError(CachenetError):
    """A message that does not decode: a bad tensor, an unknown field or operation;
    ``reason`` and ``field`` say what, where the code that found it knows."""

    def __init__(self, message: str, *, reason: str = "", field: str = "") -> None:
        super().__init__(message)
        self.reason, self.field = reason, field


class QueueFullError(CachenetError):
    """The server's request queue is full; the caller should back off."""


class NonFiniteError(CachenetError, ValueError):
    """A value to be written as JSON holds NaN or an infinity; ``field`` says where."""

    def __init__(self, field: str, value: float) -> None:
        super().__init__(f"'{field}' is {value}: JSON written by cachenet holds finite numbers "
                         "only (a figure that does not exist is null)")
        self.field = field


#: Status codes a caller may retry (the same request may succeed later).
RETRYABLE = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})


class RequestRefused(CachenetError):
    """A request a server refuses. ``code``: the status to answer, as a gRPC status code
    name (``INVALID_ARGUMENT``; a front end for another transport maps it); ``reason``:
    a stable token saying why (``input_shape``); ``field``: the request's field at fault."""

    def __init__(self, code: str, message: str, *, reason: str = "", field: str = "") -> None:
        super().__init__(message)
        self.code, self.reason, self.field = code, reason, field


class EdgeTimeout(CachenetError):
    """The edge agent did not answer a call on its local API within the timeout."""


class CloudError(CachenetError):
    """A call to the cloud server failed. ``code``: the gRPC status name, if any;
    ``reason`` and ``field``: the server's structured details, where it gave them;
    ``retryable``: whether the same call may succeed later."""

    def __init__(self, message: str, code: str | None = None, *, reason: str = "",
                 field: str = "") -> None:
        super().__init__(message)
        self.code, self.reason, self.field = code, reason, field

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE


class CloudUnavailable(CloudError):
    """No connection to the cloud, or the server is shutting down."""


class CloudTimeout(CloudError):
    """The deadline passed before the cloud answered."""


class CloudOverloaded(CloudError):
    """The cloud's queue is full (RESOURCE_EXHAUSTED)."""


class CloudRejected(CloudError):
    """The cloud refused the request as invalid or unsupported."""


class Stopped(Exception):  # control flow, not an error
    """Work that was asked to stop, stopping: not an error, outside the tree."""


class TrainingStopped(Stopped):
    """Training was asked to stop before it finished (the server is shutting down)."""


class GenerationStopped(Stopped):
    """A generation was stopped before it finished: its deadline passed or its caller left."""
