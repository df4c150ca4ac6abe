"""Output helpers shared by the peer benchmarks: CSV, JSON, RESULTS.md sections.

Timing lives in ``_timing.py``; this module only records what was measured.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Dict, List, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "out")  # raw CSV/JSON; ignored by git
RESULTS = os.path.join(HERE, "RESULTS.md")


def write_csv(path: str, rows: List[Dict[str, object]]) -> str:
    """Write dict rows (same keys) as CSV; returns the path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_json(path: str, payload: Dict[str, object]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    return path


def ratio_text_table(methods: Sequence[str], columns: Sequence[str],
                     cell: Dict[tuple, str], first: str = "method") -> str:
    """Fixed-width table for the terminal: one row per method, one column per shape."""
    w0 = max(len(first), *(len(m) for m in methods))
    widths = [max(len(c), *(len(cell.get((m, c), "")) for m in methods)) for c in columns]
    lines = [f"{first:<{w0}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(columns, widths))]
    lines.append("-" * len(lines[0]))
    for m in methods:
        lines.append(f"{m:<{w0}}  " + "  ".join(f"{cell.get((m, c), ''):>{w}}"
                                                for c, w in zip(columns, widths)))
    return "\n".join(lines)


def append_results(title: str, body: str) -> str:
    """Append a dated section to benchmarks/RESULTS.md (created if missing)."""
    with open(RESULTS, "a") as f:
        f.write(f"\n## {title}\n\n{body.rstrip()}\n")
    return RESULTS
