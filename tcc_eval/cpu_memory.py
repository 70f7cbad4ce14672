"""Keep freed CPU memory in the process instead of handing it back to the kernel (glibc only).

Why: on the CPU, eager attention and its backward allocate and free maps of tens of MB per layer (the oracle
needs them; the demo models use them). glibc serves blocks above its mmap threshold (at most 32 MiB) with
fresh mappings and unmaps them when they are freed, so every next map faults all its pages in anew and the kernel
zeroes each one. `python -m tcc_eval.bench_cpu_memory` measures what that costs side by side.

The fix is glibc's own: a top pad keeps a large free top on the heap, and glibc serves any block the top can hold
from it (the mmap threshold only applies when the top is too small), so freed maps return to the top and are
reused. Applied only where tcc-eval owns the process (the demo command line, run_all.sh's demo suite and the
tests), never on import: the allocator belongs to the process, not to a library loaded into it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

TOP_PAD_BYTES = 1 << 30
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's ceiling on 64-bit systems
# glibc reads these when a process starts (the processes this one starts)
ENVIRONMENT = {"MALLOC_TOP_PAD_": str(TOP_PAD_BYTES), "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES)}
_M_TOP_PAD, _M_MMAP_THRESHOLD = -2, -3  # mallopt's parameter numbers (malloc.h)


def _on_glibc() -> bool:
    return platform.libc_ver()[0] == "glibc"


def keep_freed_cpu_memory() -> bool:
    """Give this process, and through the environment the processes it starts, a 1 GiB heap top pad.

    Settings the user already exported win (glibc applied them at start-up). Returns whether this process
    runs with a top pad; False, changing nothing, where the C library is not glibc, which has no such setting."""
    if not _on_glibc():
        return False
    if any(name in os.environ for name in ENVIRONMENT):
        return "MALLOC_TOP_PAD_" in os.environ
    os.environ.update(ENVIRONMENT)
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    took = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and libc.mallopt(_M_TOP_PAD, TOP_PAD_BYTES)
    # Grow the top once now: a block below the threshold that the top cannot hold extends the heap by the pad.
    libc.free(libc.malloc(MMAP_THRESHOLD_BYTES // 2))
    return bool(took)


def shell_exports() -> str:
    """The ``export`` lines that give a shell script's processes the pad (run_all.sh's demo suite evaluates them);
    none when the user set any of these variables, or off glibc."""
    if not _on_glibc() or any(name in os.environ for name in ENVIRONMENT):
        return ""
    return "\n".join(f"export {name}={value}" for name, value in ENVIRONMENT.items())


if __name__ == "__main__":
    print(shell_exports())
