"""Figures: percentiles, word error rate, and the machine they were measured on."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import jiwer
import numpy as np


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def p50_p95(values: list[float]) -> dict[str, float | None]:
    return {"p50": pct(values, 50), "p95": pct(values, 95)}


def norm(text: str) -> str:
    """Lower case, punctuation removed (apostrophes kept), single spaces."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def wer(reference: str | list[str], hypothesis: str | list[str]) -> float:
    """Word error rate after :func:`norm` (one pair, or a corpus of pairs)."""
    if isinstance(reference, str) and isinstance(hypothesis, str):
        return round(float(jiwer.wer(norm(reference), norm(hypothesis))), 3)
    refs = [norm(r) for r in reference]
    hyps = [norm(h) for h in hypothesis]
    return round(float(jiwer.wer(refs, hyps)), 3)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "cpu": cpu_name(), "python": platform.python_version()}
