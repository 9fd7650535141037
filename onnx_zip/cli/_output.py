"""Printing shared by the subcommands (the library itself never prints)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def print_zip_summary(report: Mapping[str, Any]) -> None:
    """Per-layer neuron and shared counts, then the parameters saved, of a zip report."""
    print(f"{'layer':<16}{'neurons':>14}{'shared':>8}")
    for layer in report["layers"]:
        print(f"{layer['layer']:<16}{' / '.join(map(str, layer['neurons'])):>14}{layer['shared']:>8}")
    params = report["params"]
    original = sum(params[t] for t in report["tasks"])
    print(
        f"parameters: {original:,} in the originals -> {params['zipped']:,} zipped "
        f"({params['shared']:,} shared; {100 * (1 - params['zipped'] / original):.1f}% saved)"
    )
