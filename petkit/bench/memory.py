"""Peak resident memory of this process over one phase (Linux /proc), for the bench's memory column.

Why RSS and not torch's allocator statistics: torch keeps no peak counter for CPU memory (only for
CUDA), and the profiler's memory tracking slows training too much to time it in the same run.
Why a fresh process per run (child.py): memory freed by an earlier run stays in the C allocator's
pools, so a later run in the same process could grow into it without raising RSS. In-process runs
(tests) still reset the peak, but their numbers can be low for that reason; records say which.
"""

from __future__ import annotations

from pathlib import Path

STATUS = Path("/proc/self/status")


def _status_mb(field: str) -> float | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


class PeakMemory:
    """`m = PeakMemory()` resets the peak to now; `m.read()` -> (peak MB, MB added since the reset)."""

    def __init__(self):
        try:  # "5" resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False  # the peak then covers the whole process, loading included
        self.start_mb = _status_mb("VmRSS")

    def read(self) -> tuple[float | None, float | None]:
        peak = _status_mb("VmHWM")
        if peak is None or self.start_mb is None:
            return None, None
        return round(peak, 1), round(peak - self.start_mb, 1)
