from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecideRequest(_message.Message):
    __slots__ = ("capsule", "context_key", "features", "metrics", "input")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CAPSULE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_KEY_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    capsule: str
    context_key: str
    features: _struct_pb2.Struct
    metrics: _containers.ScalarMap[str, float]
    input: _struct_pb2.Value
    def __init__(self, capsule: _Optional[str] = ..., context_key: _Optional[str] = ..., features: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., input: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("decision_id", "capsule", "option", "option_index", "propensity", "context_key", "refused", "refusal", "confidence", "value", "shadow", "substituted_for", "cost_microcents", "sequence")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    CAPSULE_FIELD_NUMBER: _ClassVar[int]
    OPTION_FIELD_NUMBER: _ClassVar[int]
    OPTION_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_KEY_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    SUBSTITUTED_FOR_FIELD_NUMBER: _ClassVar[int]
    COST_MICROCENTS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    capsule: str
    option: str
    option_index: int
    propensity: float
    context_key: str
    refused: bool
    refusal: str
    confidence: _struct_pb2.Struct
    value: _struct_pb2.Value
    shadow: bool
    substituted_for: str
    cost_microcents: int
    sequence: int
    def __init__(self, decision_id: _Optional[str] = ..., capsule: _Optional[str] = ..., option: _Optional[str] = ..., option_index: _Optional[int] = ..., propensity: _Optional[float] = ..., context_key: _Optional[str] = ..., refused: _Optional[bool] = ..., refusal: _Optional[str] = ..., confidence: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., shadow: _Optional[bool] = ..., substituted_for: _Optional[str] = ..., cost_microcents: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class DecideBatchRequest(_message.Message):
    __slots__ = ("capsule", "requests")
    CAPSULE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    capsule: str
    requests: _containers.RepeatedCompositeFieldContainer[DecideRequest]
    def __init__(self, capsule: _Optional[str] = ..., requests: _Optional[_Iterable[_Union[DecideRequest, _Mapping]]] = ...) -> None: ...

class DecideBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DecideResult]
    def __init__(self, results: _Optional[_Iterable[_Union[DecideResult, _Mapping]]] = ...) -> None: ...

class DecideResult(_message.Message):
    __slots__ = ("decision", "error")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    error: ItemError
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message", "field")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    field: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("capsule", "decision_id", "reward", "components", "signal", "cost_microcents", "taken_option", "taken_propensity")
    class ComponentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CAPSULE_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    COST_MICROCENTS_FIELD_NUMBER: _ClassVar[int]
    TAKEN_OPTION_FIELD_NUMBER: _ClassVar[int]
    TAKEN_PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    capsule: str
    decision_id: str
    reward: float
    components: _containers.ScalarMap[str, float]
    signal: str
    cost_microcents: int
    taken_option: str
    taken_propensity: float
    def __init__(self, capsule: _Optional[str] = ..., decision_id: _Optional[str] = ..., reward: _Optional[float] = ..., components: _Optional[_Mapping[str, float]] = ..., signal: _Optional[str] = ..., cost_microcents: _Optional[int] = ..., taken_option: _Optional[str] = ..., taken_propensity: _Optional[float] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("decision_id",)
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    def __init__(self, decision_id: _Optional[str] = ...) -> None: ...

class FeedbackBatchRequest(_message.Message):
    __slots__ = ("capsule", "requests")
    CAPSULE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    capsule: str
    requests: _containers.RepeatedCompositeFieldContainer[FeedbackRequest]
    def __init__(self, capsule: _Optional[str] = ..., requests: _Optional[_Iterable[_Union[FeedbackRequest, _Mapping]]] = ...) -> None: ...

class FeedbackBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[FeedbackResult]
    def __init__(self, results: _Optional[_Iterable[_Union[FeedbackResult, _Mapping]]] = ...) -> None: ...

class FeedbackResult(_message.Message):
    __slots__ = ("feedback", "error")
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    feedback: FeedbackResponse
    error: ItemError
    def __init__(self, feedback: _Optional[_Union[FeedbackResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...
