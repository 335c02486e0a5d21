from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReadLogRequest(_message.Message):
    __slots__ = ("parent", "start_sequence", "kinds", "limit", "follow")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    START_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    parent: str
    start_sequence: int
    kinds: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    follow: bool
    def __init__(self, parent: _Optional[str] = ..., start_sequence: _Optional[int] = ..., kinds: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("sequence", "kind", "capsule", "time_unix_nanos", "body", "digest")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CAPSULE_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: str
    capsule: str
    time_unix_nanos: int
    body: _struct_pb2.Struct
    digest: str
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[str] = ..., capsule: _Optional[str] = ..., time_unix_nanos: _Optional[int] = ..., body: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., digest: _Optional[str] = ...) -> None: ...

class VerifyChainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyChainResponse(_message.Message):
    __slots__ = ("ok", "records", "head_digest", "checkpoints", "problems", "notes")
    OK_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    records: int
    head_digest: str
    checkpoints: int
    problems: _containers.RepeatedScalarFieldContainer[str]
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ok: _Optional[bool] = ..., records: _Optional[int] = ..., head_digest: _Optional[str] = ..., checkpoints: _Optional[int] = ..., problems: _Optional[_Iterable[str]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...
