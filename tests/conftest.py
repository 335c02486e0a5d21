import os

from hypothesis import HealthCheck, settings

# CI machines are shared and slow: no per-example deadline, bounded example counts.
settings.register_profile(
    "ci", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
