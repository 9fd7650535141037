"""``onnx-zip report REPORT.json -o SUMMARY.md``: the Markdown summary (and plots) of a JSON report."""

from __future__ import annotations

import argparse

from onnx_zip.reporting import load_report, write_summary

NAME = "report"
HELP = "render a JSON report (of zip, run or sweep) as a Markdown summary with PNG plots"
NEEDS_RUNTIME = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", help="the JSON report (zip --report, run, sweep)")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="SUMMARY.md",
        help="the Markdown file to write; plots go next to it as <stem>_<plot>.png",
    )
    parser.add_argument("--title", help="heading of the summary (default from the task names)")
    parser.add_argument("--no-plots", action="store_true", help="tables only, even with matplotlib installed")


def run(args: argparse.Namespace) -> int:
    report = load_report(args.report)
    summary = write_summary(report, args.output, title=args.title, draw=not args.no_plots)
    images = f" and {len(summary.images)} plots" if summary.images else ""
    print(f"wrote {summary.markdown}{images}")
    return 0
