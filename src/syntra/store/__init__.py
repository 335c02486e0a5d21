"""Durable storage: the WAL records the engine writes, checkpoints, and recovery."""
