"""The learning layer: what a capsule learns with, and how it decides which rule serves.

See docs/learning.md for the ``learning.json`` schema.
"""
