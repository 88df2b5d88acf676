"""The training loop hands freed heap pages back to the OS after compiling."""

import ctypes
import sys

import pytest

from metax.train import host_memory


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc are Linux's")
def test_release_freed_memory_returns_freed_heap_pages_to_the_os():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 KiB blocks stay below glibc's mmap threshold, so they live in the heap, as a
    # compiler's many small allocations do; touching them makes them resident.
    blocks = [libc.malloc(64 * 1024) for _ in range(3200)]
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)
    # Keep the last block so the heap's top is not freed (glibc trims the top by itself).
    for block in blocks[:-1]:
        libc.free(block)
    before = _rss_bytes()
    assert host_memory.release_freed_memory()
    released = before - _rss_bytes()
    libc.free(blocks[-1])
    assert released > 150 * 2**20  # of the ~200 MiB freed


def test_training_releases_freed_memory_after_compiling_and_after_each_evaluation(
    tmp_path, monkeypatch
):
    import metax.train.loop
    from tests.helpers.runs import python_api_run

    calls = []
    monkeypatch.setattr(metax.train.loop, "release_freed_memory", lambda: calls.append(1))
    python_api_run(tmp_path, num_steps=16, steps_per_call=1)  # one evaluation, at step 15
    assert len(calls) == 2
