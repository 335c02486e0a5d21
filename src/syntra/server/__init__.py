"""The gRPC service: ``syntra serve`` (:mod:`syntra.server.app`).

- :mod:`~syntra.server.decisions`, :mod:`~syntra.server.capsules`,
  :mod:`~syntra.server.audit`, :mod:`~syntra.server.admin`: the four ``syntra.v1``
  servicers, thin over :class:`syntra.Engine`.
- :mod:`~syntra.server.rpc`: what every call shares (auth, status codes, metrics, logs);
  :mod:`~syntra.server.status`: engine errors as canonical status codes;
  :mod:`~syntra.server.convert`: protobuf messages to and from engine values.
- :mod:`~syntra.server.auth` (tokens and scopes), :mod:`~syntra.server.ratelimit`,
  :mod:`~syntra.server.ops` (Prometheus and the ops HTTP port),
  :mod:`~syntra.server.jsonlog` (structured logs).
"""
