"""XLA_FLAGS for test subprocesses: a device count of their own, every other flag the test
run was given kept (so that `XLA_FLAGS=--xla_cpu_max_isa=AVX2 pytest` reaches them too)."""

import os

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def with_device_count(device_count: int) -> str:
    kept = [
        f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)
    ]
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={device_count}"])
