"""``onnx-zip export-tasks zipped.onnx -o DIR``: one model per task over one shared weights file."""

from __future__ import annotations

import argparse

from onnx_zip.deploy.export import export_tasks

NAME = "export-tasks"
HELP = "write one ONNX model per task of a zipped model, all reading one shared.weights file, plus manifest.json"
NEEDS_RUNTIME = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a model written by onnx-zip zip")
    parser.add_argument("-o", "--output", required=True, help="the folder to write (must not exist or be empty)")


def run(args: argparse.Namespace) -> int:
    result = export_tasks(args.model, args.output)
    manifest = result.manifest
    print(f"wrote {result.directory}: {len(manifest.tasks)} tasks; {manifest.shared_file} {manifest.shared_bytes:,} bytes "
          f"({manifest.shared_tensors} shared tensors, stored once)")
    for task in manifest.tasks:
        print(f"  {task.model}: inputs {task.inputs}, outputs {task.outputs}; own weights {task.weights} {task.specific_bytes:,} bytes")
    print('open each task with the session option session.disable_prepacking = "1" (onnx_zip.serving.TaskSwitcher does)')
    return 0
