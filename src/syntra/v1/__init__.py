"""Generated gRPC stubs of the ``syntra.v1`` API (``proto/syntra/v1``).

Regenerate with ``bash proto/generate.sh``; ``tests/test_proto_stubs.py`` checks that doing
so changes nothing.
"""
