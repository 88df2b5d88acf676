"""Test setup: 8 virtual CPU devices so that sharding is exercised on any machine."""

import os

# Must be set before JAX initializes its backends.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# LLVM -O0 for the tests' programs: compiling dominates the suite (many small programs run a
# few times), and -O0 compiles them much faster.
# Same HLO, same float semantics; a run that sets the level itself keeps it.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"


def _compilation_cache_dir() -> str:
    """One persistent compilation cache per test session, shared by the xdist workers and the
    subprocesses they start (launcher runs of the same config compile the same programs:
    a run then skips most of its compiling). Per session and keyed by XLA_FLAGS, so no run reuses
    programs compiled for other flags (the AVX2-only run compiles its own)."""
    import hashlib
    import tempfile
    import uuid

    session = os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex
    flags = hashlib.sha256(os.environ["XLA_FLAGS"].encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"metax-test-jax-cache-{session}-{flags}")


os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _compilation_cache_dir())
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Runs a test in float64 (finite differences and closed forms need it), then restores."""
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)
