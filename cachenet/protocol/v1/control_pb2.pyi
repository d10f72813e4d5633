from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("agent_id", "token", "device", "onnxruntime_version", "bundle_name", "bundle_version")
    class DeviceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_NAME_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    token: str
    device: _containers.ScalarMap[str, str]
    onnxruntime_version: str
    bundle_name: str
    bundle_version: str
    def __init__(self, agent_id: _Optional[str] = ..., token: _Optional[str] = ..., device: _Optional[_Mapping[str, str]] = ..., onnxruntime_version: _Optional[str] = ..., bundle_name: _Optional[str] = ..., bundle_version: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("stats_interval_s",)
    STATS_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    stats_interval_s: int
    def __init__(self, stats_interval_s: _Optional[int] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("agent_id", "token", "current_version")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    token: str
    current_version: str
    def __init__(self, agent_id: _Optional[str] = ..., token: _Optional[str] = ..., current_version: _Optional[str] = ...) -> None: ...

class FileEntry(_message.Message):
    __slots__ = ("name", "size", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class BundleHeader(_message.Message):
    __slots__ = ("push_id", "version", "manifest_json", "files", "sha256")
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    push_id: str
    version: str
    manifest_json: bytes
    files: _containers.RepeatedCompositeFieldContainer[FileEntry]
    sha256: str
    def __init__(self, push_id: _Optional[str] = ..., version: _Optional[str] = ..., manifest_json: _Optional[bytes] = ..., files: _Optional[_Iterable[_Union[FileEntry, _Mapping]]] = ..., sha256: _Optional[str] = ...) -> None: ...

class BundleChunk(_message.Message):
    __slots__ = ("push_id", "file", "offset", "data", "sha256")
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    push_id: str
    file: str
    offset: int
    data: bytes
    sha256: str
    def __init__(self, push_id: _Optional[str] = ..., file: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[str] = ...) -> None: ...

class BundleEnd(_message.Message):
    __slots__ = ("push_id",)
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    push_id: str
    def __init__(self, push_id: _Optional[str] = ...) -> None: ...

class PushMessage(_message.Message):
    __slots__ = ("header", "chunk", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: BundleHeader
    chunk: BundleChunk
    end: BundleEnd
    def __init__(self, header: _Optional[_Union[BundleHeader, _Mapping]] = ..., chunk: _Optional[_Union[BundleChunk, _Mapping]] = ..., end: _Optional[_Union[BundleEnd, _Mapping]] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("agent_id", "token", "push_id", "version", "applied", "reason")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    token: str
    push_id: str
    version: str
    applied: bool
    reason: str
    def __init__(self, agent_id: _Optional[str] = ..., token: _Optional[str] = ..., push_id: _Optional[str] = ..., version: _Optional[str] = ..., applied: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsReport(_message.Message):
    __slots__ = ("agent_id", "token", "bundle_version", "requests", "hits", "escalations", "fallbacks", "class_histogram", "telemetry")
    class ClassHistogramEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class TelemetryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    ESCALATIONS_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    CLASS_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    token: str
    bundle_version: str
    requests: int
    hits: int
    escalations: int
    fallbacks: int
    class_histogram: _containers.ScalarMap[str, int]
    telemetry: _containers.ScalarMap[str, float]
    def __init__(self, agent_id: _Optional[str] = ..., token: _Optional[str] = ..., bundle_version: _Optional[str] = ..., requests: _Optional[int] = ..., hits: _Optional[int] = ..., escalations: _Optional[int] = ..., fallbacks: _Optional[int] = ..., class_histogram: _Optional[_Mapping[str, int]] = ..., telemetry: _Optional[_Mapping[str, float]] = ...) -> None: ...

class StatsAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
