"""The allocator setting the sample stages rely on for speed (synthgen.engine.memory)."""

import platform
import sys

import pytest

from synthgen.engine.memory import reuse_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_glibc_keeps_freed_temporaries_on_the_heap():
    assert reuse_freed_memory() is True
    assert reuse_freed_memory() is True  # idempotent
