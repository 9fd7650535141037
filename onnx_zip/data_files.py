"""Reading ``.npz`` / ``.npy`` data files with limits, never unpickling anything.

Sizes are checked before any array is allocated: first the uncompressed sizes the zip's
central directory declares (an 8 MB archive inflating to 8 GB is refused at once), then each
member's ``.npy`` header (shape times item size must fit in the member and under the limit).
Only plain numeric arrays (bool, integers, floats, complex) are read; object arrays and
pickles are refused. A bare ``.npy`` file is read as a one-array dataset keyed by the file's
stem; any other file is named for what it is (an ONNX model, a pickle, text, ...).

The limit is :data:`MAX_CALIB_BYTES` unless a caller passes ``max_bytes=`` or runs inside
:func:`byte_limit` (how a CLI option such as ``--max-calib-bytes`` sets it for a whole command).
"""

from __future__ import annotations

import contextlib
import lzma
import os
import zipfile
import zlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import IO

import numpy as np
import onnx

from onnx_zip.errors import DataError

#: Default limit on the bytes one data file may hold once inflated (4 GiB).
MAX_CALIB_BYTES = 4 * 2**30
#: Largest file probed to tell whether it is an ONNX model.
_MAX_SNIFF_BYTES = 64 * 2**20
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_NUMERIC_KINDS = "biufc"
_SAVE_HINT = "store plain numeric arrays with numpy.savez(path, <input name>=array, label=labels)"

_LIMIT: ContextVar[int | None] = ContextVar("onnx_zip_data_byte_limit", default=None)


@contextlib.contextmanager
def byte_limit(max_bytes: int) -> Iterator[None]:
    """Use ``max_bytes`` as the default data-file limit inside this block."""
    if max_bytes < 1:
        raise DataError(f"the data size limit must be a positive number of bytes, got {max_bytes}")
    token = _LIMIT.set(int(max_bytes))
    try:
        yield
    finally:
        _LIMIT.reset(token)


def effective_limit(max_bytes: int | None = None) -> int:
    """``max_bytes``, else the :func:`byte_limit` in force, else :data:`MAX_CALIB_BYTES`."""
    if max_bytes is not None:
        return int(max_bytes)
    active = _LIMIT.get()
    return MAX_CALIB_BYTES if active is None else active


def _over_limit(source: str, what: str, size: int, limit: int) -> DataError:
    return DataError(
        f"{source}: {what} holds {size:,} bytes once read, over the {limit:,}-byte limit for a data file",
        hint=f"if the file is genuine, raise the limit (--max-calib-bytes {size} on the command line, "
        f"max_bytes={size} in Python)",
    )


def describe_foreign(path: Path, head: bytes) -> str:
    """What a file that is neither ``.npz`` nor ``.npy`` is, for the error message."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle, not an .npz data file (onnx_zip never unpickles data)"
    if path.suffix.lower() == ".onnx" or _is_onnx(path):
        return "an ONNX model, not an .npz data file"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file, not an .npz data file"
    return "not an .npz data file (neither a zip archive of .npy arrays nor an .npy array)"


def _is_onnx(path: Path) -> bool:
    try:
        if path.stat().st_size > _MAX_SNIFF_BYTES:
            return False
        model = onnx.ModelProto()
        model.ParseFromString(path.read_bytes())
    except Exception:  # noqa: BLE001 - any parse failure means "not an ONNX model"
        return False
    return model.HasField("graph") and len(model.graph.node) > 0


def _safe_detail(exc: BaseException) -> str:
    """An exception's text, unless it gives advice onnx_zip must never give (loading pickles)."""
    text = str(exc) or type(exc).__name__
    return type(exc).__name__ if "pickle" in text.lower() else text.split(". ")[0]


def _read_header(handle: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse an ``.npy`` header: ``(shape, fortran_order, dtype)``; refuse non-numeric dtypes."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise DataError(f"{where}: .npy format version {version} is not supported", hint=_SAVE_HINT)
    except (DataError, zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError):
        raise
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises ValueError, SyntaxError, TokenError, ...
        raise DataError(f"{where}: not a valid .npy header ({_safe_detail(exc)})", hint=_SAVE_HINT) from None
    if any(int(d) < 0 for d in shape):
        raise DataError(
            f"{where}: not a valid .npy header (negative dimension in shape {list(shape)})", hint=_SAVE_HINT
        )
    if dtype.hasobject:
        raise DataError(
            f"{where}: holds Python objects, which cannot be read without pickles (onnx_zip never unpickles data)",
            hint=_SAVE_HINT,
        )
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise DataError(f"{where}: dtype {dtype} is not a plain numeric type", hint=_SAVE_HINT)
    return tuple(int(d) for d in shape), bool(fortran), dtype


def read_npy_stream(handle: IO[bytes], available: int, where: str, limit: int) -> np.ndarray:
    """Read one ``.npy`` array from ``handle`` holding ``available`` bytes in all.

    The header's shape is checked against ``available`` and ``limit`` before allocating.

    Raises:
        DataError: bad header, non-numeric dtype, a shape the bytes cannot hold, over the limit.
    """
    shape, fortran, dtype = _read_header(handle, where)
    count = 1
    for dim in shape:
        count *= dim
    nbytes = count * dtype.itemsize
    header_bytes = handle.tell()
    if nbytes > limit:
        raise _over_limit(where, f"shape {list(shape)} {dtype}", nbytes, limit)
    if nbytes > available - header_bytes:
        raise DataError(
            f"{where}: header declares shape {list(shape)} {dtype} ({nbytes:,} bytes) but only "
            f"{max(available - header_bytes, 0):,} bytes follow",
            hint="the file is truncated or corrupt",
        )
    array = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    view = array.reshape(-1, order="A").view(np.uint8).data if count else memoryview(b"")
    filled = 0
    while filled < nbytes:
        got = handle.readinto(view[filled:])  # type: ignore[attr-defined]
        if not got:
            raise DataError(f"{where}: ends after {filled:,} of {nbytes:,} data bytes", hint="the file is truncated")
        filled += got
    return array


def _read_zip(path: Path, source: str, limit: int) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        keys: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.flag_bits & 0x1:
                raise DataError(f"{source}: member {info.filename!r} is encrypted")
            key = info.filename[:-4] if info.filename.endswith(".npy") else None
            if not key:
                raise DataError(f"{source}: member {info.filename!r} is not an .npy array", hint=_SAVE_HINT)
            if key in keys:
                raise DataError(f"{source}: member {info.filename!r} appears twice")
            keys[key] = info
        total = sum(i.file_size for i in infos)
        if total > limit:
            biggest = max(infos, key=lambda i: i.file_size)
            raise _over_limit(source, f"{len(infos)} member(s) (the largest {biggest.filename!r})", total, limit)
        arrays = {}
        for key, info in keys.items():
            with archive.open(info) as handle:
                arrays[key] = read_npy_stream(handle, info.file_size, f"{source}: member {info.filename!r}", limit)
                while handle.read(1 << 20):  # drain, so that the CRC is checked
                    pass
        return arrays


def read_arrays(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (or the one array of an ``.npy`` file, keyed by its stem).

    Args:
        path: The data file.
        max_bytes: Limit on the bytes the file may hold once read (default: :func:`effective_limit`).

    Raises:
        DataError: missing file, not an npz/npy (saying what it is), object arrays, a header
            the data cannot fill, over the limit (with the limit and how to raise it), corrupt data.
    """
    path = Path(path)
    source = f"data {path}"
    limit = effective_limit(max_bytes)
    if not path.exists():
        raise DataError(f"{source}: file not found", hint="check the path")
    if not path.is_file():
        raise DataError(f"{source}: is not a file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if head.startswith(_NPY_MAGIC):
                handle.seek(0)
                return {path.stem: read_npy_stream(handle, path.stat().st_size, source, limit)}
        if not head.startswith(_ZIP_MAGICS):
            raise DataError(f"{source}: {describe_foreign(path, head)}", hint=_SAVE_HINT)
        return _read_zip(path, source, limit)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{source}: not enough memory to read it", hint="use a smaller data file") from None
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        RuntimeError,
        ValueError,
        EOFError,
        OverflowError,
        zlib.error,
        lzma.LZMAError,
    ) as exc:
        raise DataError(f"{source}: not a readable .npz file ({_safe_detail(exc)})", hint=_SAVE_HINT) from None
    except OSError as exc:
        raise DataError(f"{source}: cannot read ({exc.strerror or exc})") from None
