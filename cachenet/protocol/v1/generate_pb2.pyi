from cachenet.protocol.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Param(_message.Message):
    __slots__ = ("int_value", "float_value", "string_value")
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    int_value: int
    float_value: float
    string_value: str
    def __init__(self, int_value: _Optional[int] = ..., float_value: _Optional[float] = ..., string_value: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("id", "model_name", "label", "count", "seed", "steps", "sampler", "policy", "params", "guidance")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Param
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Param, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    model_name: str
    label: int
    count: int
    seed: int
    steps: int
    sampler: str
    policy: str
    params: _containers.MessageMap[str, Param]
    guidance: float
    def __init__(self, id: _Optional[str] = ..., model_name: _Optional[str] = ..., label: _Optional[int] = ..., count: _Optional[int] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., sampler: _Optional[str] = ..., policy: _Optional[str] = ..., params: _Optional[_Mapping[str, Param]] = ..., guidance: _Optional[float] = ...) -> None: ...

class GenerateProgress(_message.Message):
    __slots__ = ("done", "total")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class GenerateTimings(_message.Message):
    __slots__ = ("queue_us", "compute_us", "total_us", "macs_per_image", "macs_full_per_image", "layers_skipped", "steps", "batch_images")
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    MACS_PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    MACS_FULL_PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_IMAGES_FIELD_NUMBER: _ClassVar[int]
    queue_us: int
    compute_us: int
    total_us: int
    macs_per_image: int
    macs_full_per_image: int
    layers_skipped: float
    steps: int
    batch_images: int
    def __init__(self, queue_us: _Optional[int] = ..., compute_us: _Optional[int] = ..., total_us: _Optional[int] = ..., macs_per_image: _Optional[int] = ..., macs_full_per_image: _Optional[int] = ..., layers_skipped: _Optional[float] = ..., steps: _Optional[int] = ..., batch_images: _Optional[int] = ...) -> None: ...

class GenerateResult(_message.Message):
    __slots__ = ("images", "model_name", "timings")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    images: _inference_pb2.Tensor
    model_name: str
    timings: GenerateTimings
    def __init__(self, images: _Optional[_Union[_inference_pb2.Tensor, _Mapping]] = ..., model_name: _Optional[str] = ..., timings: _Optional[_Union[GenerateTimings, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("id", "progress", "result")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    id: str
    progress: GenerateProgress
    result: GenerateResult
    def __init__(self, id: _Optional[str] = ..., progress: _Optional[_Union[GenerateProgress, _Mapping]] = ..., result: _Optional[_Union[GenerateResult, _Mapping]] = ...) -> None: ...

class GeneratorInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyInfo(_message.Message):
    __slots__ = ("name", "archs", "defaults")
    class DefaultsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Param
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Param, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHS_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    archs: _containers.RepeatedScalarFieldContainer[str]
    defaults: _containers.MessageMap[str, Param]
    def __init__(self, name: _Optional[str] = ..., archs: _Optional[_Iterable[str]] = ..., defaults: _Optional[_Mapping[str, Param]] = ...) -> None: ...

class DiffusionModelInfo(_message.Message):
    __slots__ = ("name", "arch", "image_shape", "classes", "policies", "l2c_router", "l2c_steps", "l2c_sampler", "max_steps", "device")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    L2C_ROUTER_FIELD_NUMBER: _ClassVar[int]
    L2C_STEPS_FIELD_NUMBER: _ClassVar[int]
    L2C_SAMPLER_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    name: str
    arch: str
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    classes: _containers.RepeatedScalarFieldContainer[str]
    policies: _containers.RepeatedScalarFieldContainer[str]
    l2c_router: bool
    l2c_steps: int
    l2c_sampler: str
    max_steps: int
    device: str
    def __init__(self, name: _Optional[str] = ..., arch: _Optional[str] = ..., image_shape: _Optional[_Iterable[int]] = ..., classes: _Optional[_Iterable[str]] = ..., policies: _Optional[_Iterable[str]] = ..., l2c_router: _Optional[bool] = ..., l2c_steps: _Optional[int] = ..., l2c_sampler: _Optional[str] = ..., max_steps: _Optional[int] = ..., device: _Optional[str] = ...) -> None: ...

class GeneratorInfo(_message.Message):
    __slots__ = ("models", "default_model", "samplers", "policies", "max_count", "max_guidance", "max_image_steps")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLERS_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_STEPS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[DiffusionModelInfo]
    default_model: str
    samplers: _containers.RepeatedScalarFieldContainer[str]
    policies: _containers.RepeatedCompositeFieldContainer[PolicyInfo]
    max_count: int
    max_guidance: float
    max_image_steps: int
    def __init__(self, models: _Optional[_Iterable[_Union[DiffusionModelInfo, _Mapping]]] = ..., default_model: _Optional[str] = ..., samplers: _Optional[_Iterable[str]] = ..., policies: _Optional[_Iterable[_Union[PolicyInfo, _Mapping]]] = ..., max_count: _Optional[int] = ..., max_guidance: _Optional[float] = ..., max_image_steps: _Optional[int] = ...) -> None: ...
