"""The human-readable summary of a report: one Markdown file, with PNG plots beside it.

``summary.md`` gets the tables of :mod:`onnx_zip.reporting.markdown`; when matplotlib is installed,
``summary_<plot>.png`` files (see :data:`onnx_zip.reporting.plots.PLOTS`) are written next to it and
referenced from it, otherwise a one-line note says how to get them. Every file is written
atomically, after the report was checked, so a bad report leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnx_zip.errors import InputError
from onnx_zip.model_io import atomic_write_bytes, check_writable
from onnx_zip.reporting import markdown, plots

logger = logging.getLogger(__name__)

NO_PLOTS_NOTE = "_Plots skipped: matplotlib is not installed (`pip install 'onnx-zip[plot]'`)._"


@dataclass
class Summary:
    """The files :func:`write_summary` wrote.

    Attributes:
        markdown: The Markdown file.
        images: The PNG files, in the order the summary shows them (empty without matplotlib).
    """

    markdown: Path
    images: list[Path] = field(default_factory=list)


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a JSON report written by ``zip --report``, ``run`` or ``sweep``.

    Raises:
        InputError: the file is missing, not JSON, or not such a report.
    """
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"report {path}: file not found", hint="check the path") from None
    except IsADirectoryError:
        raise InputError(f"report {path}: is a folder, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"report {path}: not valid JSON ({exc})",
                         hint="pass the --report file of zip, run or sweep") from None
    check_report(report, f"report {path}")
    return report


def check_report(report: object, label: str = "report") -> None:
    """Check that ``report`` has what the summary reads.

    Raises:
        InputError: naming the first missing or malformed key.
    """
    if not isinstance(report, Mapping):
        raise InputError(f"{label}: expected a JSON object", hint="pass the --report file of zip, run or sweep")
    tasks = report.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise InputError(f"{label}: no 'tasks' list of task names", hint="pass the --report file of zip, run or sweep")
    if "layers" not in report and "sweep" not in report:
        raise InputError(f"{label}: neither 'layers' (a zip report) nor 'sweep' (a sweep report)")
    _check_layers(report, tasks, label)
    _check_sweep(report, label)


def _check_layers(report: Mapping[str, Any], tasks: list[str], label: str) -> None:
    """Check the ``layers`` entries and ``params`` of a zip report (nothing when ``layers`` is absent)."""
    for i, layer in enumerate(report.get("layers") or []):
        for key in ("layer", "kind", "neurons", "shared"):
            if not isinstance(layer, Mapping) or key not in layer:
                raise InputError(f"{label}: layers[{i}] has no {key!r}")
        if len(layer["neurons"]) != len(tasks):
            raise InputError(f"{label}: layers[{i}].neurons has {len(layer['neurons'])} entries for {len(tasks)} tasks")
    if report.get("layers") is not None:
        params = report.get("params")
        if not isinstance(params, Mapping) or any(k not in params for k in [*tasks, "zipped", "shared"]):
            raise InputError(f"{label}: 'params' must hold every task, 'zipped' and 'shared'")


def _check_sweep(report: Mapping[str, Any], label: str) -> None:
    """Check the ``sweep`` levels of a sweep report (nothing when ``sweep`` is absent)."""
    for i, level in enumerate(report.get("sweep") or []):
        for key in ("share", "params", "shared_fraction", "accuracy"):
            if not isinstance(level, Mapping) or key not in level:
                raise InputError(f"{label}: sweep[{i}] has no {key!r}")


def render_markdown(report: Mapping[str, Any], *, title: str | None = None, images: Mapping[str, str] | None = None,
                    plots_note: str | None = None) -> str:
    """The summary's Markdown text.

    Args:
        report: A checked report.
        title: The heading (default from the task names).
        images: ``{plot suffix: relative file name}`` of the drawn plots.
        plots_note: A line to show instead of the plots (for example when matplotlib is missing).
    """
    report = dict(report)
    images = dict(images or {})
    tasks = report["tasks"]
    lines = [f"# {title or 'onnx-zip: ' + ' + '.join(tasks)}", ""]
    kind = "sharing sweep" if report.get("sweep") else "zipped model"
    settings = report.get("settings") or {}
    lines += [f"A {kind} of {len(tasks)} tasks ({', '.join(tasks)}) written by onnx-zip"
              + (f" {report['version']}" if report.get("version") else "")
              + (f"; pairing {settings.get('pairing')}, matching {settings.get('match')}" if settings else "")
              + ".", ""]
    if plots_note:
        lines += [plots_note, ""]
    captions = {suffix: caption for suffix, caption, _ in plots.PLOTS}
    sections = [
        ("", markdown.sources_section),
        ("", markdown.evaluation_section),
        ("sweep", markdown.sweep_section),
        ("", markdown.params_section),
        ("shared", markdown.layers_section),
        ("costs", lambda r: []),
        ("layerwise", markdown.layerwise_section),
        ("", markdown.finetune_section),
        ("", markdown.settings_section),
    ]
    for suffix, section in sections:
        lines += section(report)
        if suffix in images:
            lines += [f"![{captions[suffix]}]({images[suffix]})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_summary(report: Mapping[str, Any], path: str | os.PathLike[str], *, title: str | None = None,
                  draw: bool = True) -> Summary:
    """Write the Markdown summary of ``report`` to ``path``, with PNG plots next to it.

    Args:
        report: A report of ``zip``, ``run`` or ``sweep`` (checked first).
        path: The Markdown file; plots are ``<stem>_<plot>.png`` in the same folder.
        title: The heading (default from the task names).
        draw: Draw plots when matplotlib is installed (False: tables only).

    Returns:
        The files written.

    Raises:
        InputError: the report is malformed or the folder cannot be written.
    """
    check_report(report)
    path = Path(path)
    check_writable(path)
    images: dict[str, str] = {}
    written: list[Path] = []
    note = None
    if draw and plots.available():
        for suffix, _, draw_plot in plots.PLOTS:
            data = draw_plot(dict(report))
            if data is None:
                continue
            image = path.with_name(f"{path.stem}_{suffix}.png")
            atomic_write_bytes(image, data)
            images[suffix] = image.name
            written.append(image)
    elif draw:
        note = NO_PLOTS_NOTE
        logger.info("matplotlib is not installed: the summary has tables only")
    atomic_write_bytes(path, render_markdown(report, title=title, images=images, plots_note=note).encode())
    logger.info("wrote %s and %d plots", path, len(written))
    return Summary(markdown=path, images=written)
