from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Capsule(_message.Message):
    __slots__ = ("name", "options", "reward_spec", "learning_config", "algorithm", "lifecycle", "shadow", "program", "policy", "decisions", "pending", "budget")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REWARD_SPEC_FIELD_NUMBER: _ClassVar[int]
    LEARNING_CONFIG_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    name: str
    options: _containers.RepeatedScalarFieldContainer[str]
    reward_spec: _struct_pb2.Struct
    learning_config: _struct_pb2.Struct
    algorithm: str
    lifecycle: str
    shadow: bool
    program: bool
    policy: _struct_pb2.Struct
    decisions: int
    pending: int
    budget: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., options: _Optional[_Iterable[str]] = ..., reward_spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., learning_config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., algorithm: _Optional[str] = ..., lifecycle: _Optional[str] = ..., shadow: _Optional[bool] = ..., program: _Optional[bool] = ..., policy: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., decisions: _Optional[int] = ..., pending: _Optional[int] = ..., budget: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class InstallCapsuleRequest(_message.Message):
    __slots__ = ("parent", "capsule_id", "yaml_spec", "lyc", "options", "reward_spec", "learning_config", "limits", "context_spec", "policy", "budget", "shadow")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CAPSULE_ID_FIELD_NUMBER: _ClassVar[int]
    YAML_SPEC_FIELD_NUMBER: _ClassVar[int]
    LYC_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REWARD_SPEC_FIELD_NUMBER: _ClassVar[int]
    LEARNING_CONFIG_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SPEC_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    parent: str
    capsule_id: str
    yaml_spec: str
    lyc: bytes
    options: _containers.RepeatedScalarFieldContainer[str]
    reward_spec: _struct_pb2.Struct
    learning_config: _struct_pb2.Struct
    limits: _struct_pb2.Struct
    context_spec: _struct_pb2.Struct
    policy: _struct_pb2.Struct
    budget: _struct_pb2.Struct
    shadow: bool
    def __init__(self, parent: _Optional[str] = ..., capsule_id: _Optional[str] = ..., yaml_spec: _Optional[str] = ..., lyc: _Optional[bytes] = ..., options: _Optional[_Iterable[str]] = ..., reward_spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., learning_config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., limits: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., context_spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., policy: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., budget: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., shadow: _Optional[bool] = ...) -> None: ...

class GetCapsuleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListCapsulesRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCapsulesResponse(_message.Message):
    __slots__ = ("capsules", "next_page_token")
    CAPSULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    capsules: _containers.RepeatedCompositeFieldContainer[Capsule]
    next_page_token: str
    def __init__(self, capsules: _Optional[_Iterable[_Union[Capsule, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteCapsuleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCapsuleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateLearningConfigRequest(_message.Message):
    __slots__ = ("name", "learning_config")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEARNING_CONFIG_FIELD_NUMBER: _ClassVar[int]
    name: str
    learning_config: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., learning_config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpdateRewardSpecRequest(_message.Message):
    __slots__ = ("name", "reward_spec")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REWARD_SPEC_FIELD_NUMBER: _ClassVar[int]
    name: str
    reward_spec: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., reward_spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpdatePolicyRequest(_message.Message):
    __slots__ = ("name", "policy")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    name: str
    policy: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., policy: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class FreezeCapsuleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnfreezeCapsuleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("name", "report")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    report: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., report: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ListContextsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListContextsResponse(_message.Message):
    __slots__ = ("contexts", "next_page_token")
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    contexts: _containers.RepeatedCompositeFieldContainer[Context]
    next_page_token: str
    def __init__(self, contexts: _Optional[_Iterable[_Union[Context, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Context(_message.Message):
    __slots__ = ("key", "options", "best_option")
    KEY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    BEST_OPTION_FIELD_NUMBER: _ClassVar[int]
    key: str
    options: _containers.RepeatedCompositeFieldContainer[OptionStats]
    best_option: str
    def __init__(self, key: _Optional[str] = ..., options: _Optional[_Iterable[_Union[OptionStats, _Mapping]]] = ..., best_option: _Optional[str] = ...) -> None: ...

class OptionStats(_message.Message):
    __slots__ = ("option", "pulls", "mean_reward")
    OPTION_FIELD_NUMBER: _ClassVar[int]
    PULLS_FIELD_NUMBER: _ClassVar[int]
    MEAN_REWARD_FIELD_NUMBER: _ClassVar[int]
    option: str
    pulls: int
    mean_reward: float
    def __init__(self, option: _Optional[str] = ..., pulls: _Optional[int] = ..., mean_reward: _Optional[float] = ...) -> None: ...

class GetMemoryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Memory(_message.Message):
    __slots__ = ("name", "contexts", "pending", "state_bytes", "state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    contexts: int
    pending: int
    state_bytes: int
    state: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., contexts: _Optional[int] = ..., pending: _Optional[int] = ..., state_bytes: _Optional[int] = ..., state: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
