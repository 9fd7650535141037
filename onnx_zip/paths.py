"""Output-vs-input guard: no command ever writes over a file it reads.

A command calls :func:`check_outputs` once, before any long work, with every file it reads
and every file it will write. Two paths are "the same file" when they resolve to the same
place (symlinks followed, ``..`` collapsed) or, for files that exist, when they share
``(st_dev, st_ino)`` (hard links, bind mounts). An output is refused when it is the same
file as an input, or as another output (``--report`` equal to ``-o``). There is no way
around this refusal: ``--force`` only allows replacing an existing *output*.

:func:`track_inputs` is the second line of defence: while it is active, every file read
through :func:`onnx_zip.model_io.load_model` and :func:`onnx_zip.data.load_npz` is recorded
(:func:`register_input`) and :func:`onnx_zip.model_io.atomic_write_bytes` refuses to replace
any of them, even when a command forgot its :func:`check_outputs` call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from onnx_zip.errors import InputError

PathLike = str | os.PathLike[str]
#: ``(label, path)`` pairs, or a mapping ``label -> path``; a bare path is labelled by itself.
Named = Mapping[str, PathLike | None] | Iterable[tuple[str, PathLike | None] | PathLike | None]


@dataclass(frozen=True)
class FileIdentity:
    """What makes two paths the same file.

    Attributes:
        resolved: The absolute path with symlinks followed (``Path.resolve``).
        inode: ``(st_dev, st_ino)`` of the file when it exists, else ``None``.
    """

    resolved: Path
    inode: tuple[int, int] | None

    def same_as(self, other: FileIdentity) -> bool:
        """True when both name one file: same resolved path, or same device and inode."""
        if self.resolved == other.resolved:
            return True
        return self.inode is not None and self.inode == other.inode


def identity(path: PathLike) -> FileIdentity:
    """The :class:`FileIdentity` of ``path`` (the file need not exist)."""
    p = Path(os.path.expanduser(os.fspath(path)))
    resolved = p.resolve(strict=False)
    try:
        st = os.stat(p)
        inode: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        inode = None
    return FileIdentity(resolved, inode)


def _named(items: Named | None) -> list[tuple[str, Path]]:
    """Normalise the accepted forms of named paths to ``[(label, path)]``, dropping ``None``."""
    if items is None:
        return []
    pairs: Iterable[tuple[str, PathLike | None] | PathLike | None]
    pairs = items.items() if isinstance(items, Mapping) else items
    out: list[tuple[str, Path]] = []
    for item in pairs:
        if item is None:
            continue
        if isinstance(item, tuple):
            label, path = item
            if path is not None:
                out.append((label, Path(os.fspath(path))))
        else:
            out.append((os.fspath(item), Path(os.fspath(item))))
    return out


def _describe(label: str, path: Path) -> str:
    return str(path) if label == str(path) else f"{label} {path}"


def check_outputs(inputs: Named | None, outputs: Named | None) -> None:
    """Refuse any output that is an input, or that is the same file as another output.

    Args:
        inputs: Every file the command reads: ``{"model a": "a.onnx", ...}``, ``[("calib", p)]``
            or bare paths. ``None`` entries are skipped.
        outputs: Every file the command writes, in the same forms. The temporary file an output
            is written through (same folder, ``O_EXCL``) can never be an existing file, so the
            final path is what is checked.

    Raises:
        InputError: naming both paths, listing every clash at once.
    """
    ins = [(label, path, identity(path)) for label, path in _named(inputs)]
    outs = [(label, path, identity(path)) for label, path in _named(outputs)]
    clashes: list[str] = []
    for i, (olabel, opath, oid) in enumerate(outs):
        for ilabel, ipath, iid in ins:
            if oid.same_as(iid):
                clashes.append(f"{_describe(olabel, opath)} would overwrite the input {_describe(ilabel, ipath)}")
        for olabel2, opath2, oid2 in outs[:i]:
            if oid.same_as(oid2):
                clashes.append(f"{_describe(olabel, opath)} and {_describe(olabel2, opath2)} are the same file")
    if clashes:
        raise InputError(
            "; ".join(clashes),
            hint="give every output its own new path (inputs are never overwritten, --force or not)",
        )


# --- the safety net: inputs recorded while a command runs ------------------------------------

_TRACKED: ContextVar[tuple[FileIdentity, ...] | None] = ContextVar("onnx_zip_tracked_inputs", default=None)
_LABELS: ContextVar[dict[Path, str] | None] = ContextVar("onnx_zip_tracked_labels", default=None)


@contextlib.contextmanager
def track_inputs(initial: Sequence[PathLike] = ()) -> Iterator[None]:
    """Record the files read inside this block so that no write can replace them.

    Args:
        initial: Files to protect from the start (for example every path on the command line
            that names an input).
    """
    token = _TRACKED.set(tuple(identity(p) for p in initial))
    labels = _LABELS.set({identity(p).resolved: os.fspath(p) for p in initial})
    try:
        yield
    finally:
        _TRACKED.reset(token)
        _LABELS.reset(labels)


def register_input(path: PathLike) -> None:
    """Record ``path`` as read (no-op outside :func:`track_inputs`)."""
    tracked = _TRACKED.get()
    if tracked is None:
        return
    ident = identity(path)
    _TRACKED.set(tracked + (ident,))
    labels = _LABELS.get()
    if labels is not None:
        labels.setdefault(ident.resolved, os.fspath(path))


def protected_inputs() -> tuple[FileIdentity, ...]:
    """The identities recorded by the active :func:`track_inputs` block (empty outside one)."""
    return _TRACKED.get() or ()


def refuse_protected(output: PathLike, protect: Iterable[PathLike] = ()) -> None:
    """Raise when ``output`` is one of ``protect`` or a tracked input.

    Raises:
        InputError: naming the output and the input it would replace.
    """
    oid = identity(output)
    for path in protect:
        if oid.same_as(identity(path)):
            raise InputError(
                f"output {output} would overwrite the input {path}",
                hint="give the output its own new path (inputs are never overwritten)",
            )
    labels = _LABELS.get() or {}
    for iid in protected_inputs():
        if oid.same_as(iid):
            raise InputError(
                f"output {output} would overwrite the input {labels.get(iid.resolved, iid.resolved)}",
                hint="give the output its own new path (inputs are never overwritten)",
            )
