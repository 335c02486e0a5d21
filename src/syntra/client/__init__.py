"""Python clients of a Syntra server's gRPC API (``syntra.v1``).

    with Client("127.0.0.1:7443", token=secret) as client:
        decision = client.decide("tenants/acme/jobs/web/capsules/cta", "home", fallback="blue")
        ...
        client.feedback(decision, reward=1.0)

:class:`Client` blocks; :class:`AsyncClient` has the same methods as coroutines. Failed
calls raise :class:`SyntraRpcError` (code, message, the field at fault, retry_after); bad
arguments raise :class:`syntra.errors.InvalidArgument`. ``decide(..., fallback=option)``
never raises for an unreachable, slow, refusing or broken service: it answers with the
fallback option, marked ``fallback=True``.
"""

from syntra.client._async import AsyncClient
from syntra.client._convert import Decision
from syntra.client._errors import SyntraRpcError
from syntra.client._sync import Client

__all__ = ["AsyncClient", "Client", "Decision", "SyntraRpcError"]
