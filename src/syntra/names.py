"""Resource names: ``tenants/{tenant}/jobs/{job}/capsules/{capsule}``.

Each part is 1 to 128 characters from ``[A-Za-z0-9_-]``, as in Google's resource-oriented
API style.

>>> CapsuleName.parse("tenants/acme/jobs/llm/capsules/router").job
'llm'
>>> str(CapsuleName("acme", "llm", "router"))
'tenants/acme/jobs/llm/capsules/router'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from syntra.errors import InvalidName

# One part of a name, as a regular expression (other resource patterns build on it).
NAME_PART = r"[A-Za-z0-9_-]{1,128}"
_CAPSULE_NAME = re.compile(rf"tenants/({NAME_PART})/jobs/({NAME_PART})/capsules/({NAME_PART})")
_PART_ONLY = re.compile(NAME_PART)
# The parents a capsule lives under, for APIs that list or scope by them.
TENANT_NAME = re.compile(rf"tenants/{NAME_PART}")
JOB_NAME = re.compile(rf"tenants/{NAME_PART}/jobs/{NAME_PART}")


@dataclass(frozen=True, slots=True)
class CapsuleName:
    tenant: str
    job: str
    capsule: str

    def __post_init__(self) -> None:
        for field in ("tenant", "job", "capsule"):
            value = getattr(self, field)
            if not isinstance(value, str) or not _PART_ONLY.fullmatch(value):
                raise InvalidName(
                    f"{field} must be 1-128 characters from [A-Za-z0-9_-], got {value!r}"
                )

    @classmethod
    def parse(cls, name: object) -> CapsuleName:
        if not isinstance(name, str):
            raise InvalidName(f"a capsule name must be a string, got {type(name).__name__}")
        match = _CAPSULE_NAME.fullmatch(name)
        if match is None:
            shown = name if len(name) <= 200 else name[:200] + "..."
            raise InvalidName(
                "a capsule name must look like tenants/{tenant}/jobs/{job}/capsules/{capsule}"
                f" with parts of 1-128 characters from [A-Za-z0-9_-], got {shown!r}"
            )
        return cls(*match.groups())

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/jobs/{self.job}/capsules/{self.capsule}"
