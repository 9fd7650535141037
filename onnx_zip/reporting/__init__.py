"""Human-readable summaries of reports: Markdown tables (:mod:`.markdown`), PNG plots (:mod:`.plots`,
optional matplotlib) and the writer that puts them side by side (:mod:`.summary`)."""

from onnx_zip.reporting.summary import Summary, check_report, load_report, render_markdown, write_summary

__all__ = ["Summary", "check_report", "load_report", "render_markdown", "write_summary"]
