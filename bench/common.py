"""What every benchmark script records next to its numbers: device, peak rate, git SHA. The code lives in
the package (wmpo.bench.measure, shared with `wmpo bench`); this module re-exports it for the scripts and
adds the preset helpers they use."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wmpo.bench.measure import (  # noqa: E402,F401
    PEAK_BF16,
    bf16_peak_flops,
    count_flops,
    device_name,
    peak_flops,
    result_header,
    spread,
    sync,
    time_ms,
    write_result,
)
from wmpo.bench.measure import git_sha as _git_sha  # noqa: E402


def git_sha() -> str:
    return _git_sha(ROOT) or "unknown"


def preset_config(name: str):
    """The pipeline preset `name` of wmpo.config (micro | tiny | cpu | small | paper): the benchmarks
    build their models from the same configs the pipeline trains (a run's RunConfig)."""
    from wmpo.config import get_preset

    return get_preset(name)


def preset_names() -> list[str]:
    from wmpo.config import PRESETS

    return sorted(PRESETS)
