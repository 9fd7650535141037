"""Generators of broken and hostile input files (models, data files, recipes), built by code.

Nothing here is a committed binary: every case writes its files into a folder it is given.
A case is a :class:`Case`: a name, what it is (``model``, ``data`` or ``recipe``), a
``make(folder) -> Path`` that writes the hostile file (and any side files) and returns its
path, and either ``expect`` (a fragment of the one-line refusal) or ``ok=True`` for inputs a
guarded loader must accept.

The base model is a seeded two-layer MLP ``x (N, 4) -> Gemm(fc1: 3x4) -> Relu -> Gemm(fc2: 2x3) -> y``.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES, HIDDEN, CLASSES = 4, 3, 2


@dataclass(frozen=True)
class Case:
    """One hostile input.

    Attributes:
        name: Unique id (used as the pytest id).
        kind: ``model``, ``data`` or ``recipe``.
        make: Writes the file(s) into a folder; returns the path to pass to the tool.
        expect: A fragment of the refusal message (``None`` when ``ok``).
        ok: The input is valid (or repaired by the loader) and must be accepted.
    """

    name: str
    kind: str
    make: Callable[[Path], Path]
    expect: str | None = None
    ok: bool = False


# --- the base model and data --------------------------------------------------------------


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded weights: w1 (3, 4), b1 (3,), w2 (2, 3), b2 (2,), float32."""
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((HIDDEN, FEATURES)).astype(np.float32),
        "b1": rng.standard_normal(HIDDEN).astype(np.float32),
        "w2": rng.standard_normal((CLASSES, HIDDEN)).astype(np.float32),
        "b2": rng.standard_normal(CLASSES).astype(np.float32),
    }


def mlp(seed: int = 0, elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """The base MLP (opset 17, IR 8); ``elem`` is the declared input/output element type."""
    inits = [numpy_helper.from_array(a, n) for n, a in weights(seed).items()]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", elem, ["N", FEATURES])],
        [helper.make_tensor_value_info("y", elem, ["N", CLASSES])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def good_data(n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """``x`` (n, 4) float32 and ``label`` (n,) int64, seeded."""
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, FEATURES)).astype(np.float32), "label": rng.integers(0, CLASSES, n)}


def write_model(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _init(model: onnx.ModelProto, name: str) -> TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _edited(edit: Callable[[onnx.ModelProto], None], name: str = "m.onnx") -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        model = mlp()
        edit(model)
        return write_model(model, folder / name)

    return make


def _raw_bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    return make


# --- model cases ---------------------------------------------------------------------------


def _external(location: str, *, side: str | None = "w1.bin", length: int | None = None, offset: int = 0,
              link_to: str | None = None, payload: bytes | None = None) -> Callable[[Path], Path]:
    """The MLP with ``w1`` stored externally at ``location`` (side file ``side`` written in ``folder``)."""

    def make(folder: Path) -> Path:
        model = mlp()
        w1 = _init(model, "w1")
        data = payload if payload is not None else w1.raw_data
        if side is not None:
            (folder / side).write_bytes(data)
        if link_to is not None:
            target = folder.parent / "outside.bin"
            target.write_bytes(data)
            os.symlink(target, folder / link_to)
        w1.ClearField("raw_data")
        w1.data_location = TensorProto.EXTERNAL
        entries = {"location": location, "offset": str(offset)}
        if length is not None:
            entries["length"] = str(length)
        for key, value in entries.items():
            w1.external_data.add(key=key, value=value)
        return write_model(model, folder / "m.onnx")

    return make


def _set_raw(name: str, cut: int) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        t = _init(model, name)
        t.raw_data = t.raw_data[:cut] if cut < 0 else t.raw_data + b"\0" * cut

    return edit


def _dims(name: str, dims: list[int]) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        t = _init(model, name)
        del t.dims[:]
        t.dims.extend(dims)

    return edit


def _replace_init(name: str, array: np.ndarray) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        _init(model, name).CopyFrom(numpy_helper.from_array(array, name))

    return edit


def _typed_floats(model: onnx.ModelProto) -> None:
    t = _init(model, "w1")
    t.ClearField("raw_data")
    t.float_data.extend([0.5] * (HIDDEN * FEATURES - 1))  # one value short


def _data_type(name: str, data_type: int) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        _init(model, name).data_type = data_type

    return edit


def _cast_model(np_type: type, onnx_type: int) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        fresh = mlp(elem=onnx_type)
        for t in fresh.graph.initializer:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np_type), t.name))
        model.CopyFrom(fresh)

    return edit


def _bfloat16(model: onnx.ModelProto) -> None:
    t = _init(model, "w1")
    values = numpy_helper.to_array(t).astype(np.float32).view(np.uint32) >> 16
    t.CopyFrom(helper.make_tensor("w1", TensorProto.BFLOAT16, list(t.dims), values.astype(np.uint16).tobytes(), raw=True))


def _sparse(indices: np.ndarray | None = None, dims: list[int] | None = None) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        w1 = numpy_helper.to_array(_init(model, "w1"))
        flat = np.flatnonzero(w1) if indices is None else indices
        values = numpy_helper.from_array(w1.reshape(-1)[np.clip(flat, 0, w1.size - 1)], "w1")
        idx = numpy_helper.from_array(flat.astype(np.int64), "w1_indices")
        sparse = helper.make_sparse_tensor(values, idx, dims or list(w1.shape))
        keep = [t for t in model.graph.initializer if t.name != "w1"]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        model.graph.sparse_initializer.append(sparse)

    return edit


def _cycle(model: onnx.ModelProto) -> None:
    model.graph.node[0].input[0] = "r"  # fc1 reads relu's output, relu reads fc1's


def _dangling(model: onnx.ModelProto) -> None:
    model.graph.node[2].input[0] = "nowhere"


def _twice(model: onnx.ModelProto) -> None:
    model.graph.node[1].output[0] = "h"


def _nan(name: str, value: float) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        array = numpy_helper.to_array(_init(model, name)).copy()
        array.reshape(-1)[0] = value
        _init(model, name).CopyFrom(numpy_helper.from_array(array, name))

    return edit


def _no_graph(model: onnx.ModelProto) -> None:
    model.ClearField("graph")


def _empty_graph(model: onnx.ModelProto) -> None:
    del model.graph.node[:]


def _no_opset(model: onnx.ModelProto) -> None:
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.example", 1))


def _sparse_constant(model: onnx.ModelProto) -> None:
    values = numpy_helper.from_array(np.ones(2, np.float32), "v")
    idx = numpy_helper.from_array(np.array([0, 1], np.int64), "i")
    node = helper.make_node("Constant", [], ["c"], name="const", sparse_value=helper.make_sparse_tensor(values, idx, [2]))
    model.graph.node.insert(0, node)


def _constant_nan(model: onnx.ModelProto) -> None:
    keep = [t for t in model.graph.initializer if t.name != "w2"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    w2 = weights()["w2"].copy()
    w2[0, 0] = np.inf
    model.graph.node.insert(0, helper.make_node("Constant", [], ["w2"], name="w2_const", value=numpy_helper.from_array(w2, "w2")))


def _pickle_bytes() -> bytes:
    return pickle.dumps({"weights": [1, 2, 3]}, protocol=4)


def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **good_data())
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _truncated(fraction: float) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        data = mlp().SerializeToString()
        (folder / "m.onnx").write_bytes(data[: int(len(data) * fraction)])
        return folder / "m.onnx"

    return make


def _folder(folder: Path) -> Path:
    (folder / "dir.onnx").mkdir()
    return folder / "dir.onnx"


def model_cases() -> list[Case]:
    """The hostile model files (every one named in the message by its path)."""
    m = "model"
    cases = [
        Case("truncated-half", m, _truncated(0.5), "not a readable ONNX model"),
        Case("truncated-tail", m, _truncated(0.97), "not a readable ONNX model"),
        Case("random-bytes", m, _raw_bytes("m.onnx", np.random.default_rng(1).bytes(300)), "m.onnx"),
        Case("empty-file", m, _raw_bytes("m.onnx", b""), "no graph"),
        Case("text-file", m, _raw_bytes("m.onnx", b"hello, I am not a model\n"), "m.onnx"),
        Case("npz-as-model", m, _raw_bytes("m.onnx", _npz_bytes()), "zip archive"),
        Case("npy-as-model", m, _raw_bytes("m.onnx", _npy_bytes(np.ones(3))), ".npy array"),
        Case("pickle-as-model", m, _raw_bytes("m.onnx", _pickle_bytes()), "pickle"),
        Case("folder-as-model", m, _folder, "folder"),
        Case("missing-file", m, lambda folder: folder / "absent.onnx", "file not found"),
        Case("ext-missing-side-file", m, _external("w1.bin", side=None), "w1.bin not found"),
        Case("ext-dotdot", m, _external("../outside.bin"), "leaves the model's folder"),
        Case("ext-absolute", m, _external("/etc/passwd"), "is absolute"),
        Case("ext-symlink-out", m, _external("link.bin", side=None, link_to="link.bin"), "link leading out"),
        Case("ext-length-mismatch", m, _external("w1.bin", length=7), "external data length is 7"),
        Case("ext-offset-beyond", m, _external("w1.bin", offset=1000), "are needed"),
        Case("ext-negative-offset", m, _external("w1.bin", offset=-4), "not a byte count"),
        Case("ext-side-too-short", m, _external("w1.bin", payload=b"\0" * 10), "are needed"),
        Case("ext-no-location", m, _external("", side=None), "without a valid location"),
        Case("ext-valid", m, _external("w1.bin"), ok=True),
        Case("raw-short", m, _edited(_set_raw("w1", -3)), "raw data holds 45 bytes"),
        Case("raw-long", m, _edited(_set_raw("b2", 5)), "raw data holds 13 bytes"),
        Case("dims-absurd", m, _edited(_dims("w1", [2**20, 2**20, 2**10])), "over the"),
        Case("dims-larger", m, _edited(_dims("w1", [300, 4])), "declares dims [300, 4]"),
        Case("dims-negative", m, _edited(_dims("w1", [-3, 4])), "negative dims"),
        Case("typed-count-short", m, _edited(_typed_floats), "holds 11"),
        Case("dtype-unknown", m, _edited(_data_type("w1", 99)), "data type 99"),
        Case("dtype-float8", m, _edited(_data_type("w1", TensorProto.FLOAT8E4M3FN)), "FLOAT8E4M3FN"),
        Case("dtype-undefined", m, _edited(_data_type("b1", TensorProto.UNDEFINED)), "UNDEFINED"),
        Case("model-float16", m, _edited(_cast_model(np.float16, TensorProto.FLOAT16)), "float16"),
        Case("model-float64", m, _edited(_cast_model(np.float64, TensorProto.DOUBLE)), "float64"),
        Case("weight-bfloat16", m, _edited(_bfloat16), "bfloat16"),
        Case("weight-int8", m, _edited(_replace_init("w1", np.ones((HIDDEN, FEATURES), np.int8))), "int8"),
        Case("layer-0-neurons", m, _edited(_replace_init("w1", np.ones((0, FEATURES), np.float32))), "no neurons"),
        Case("sparse-valid", m, _edited(_sparse()), ok=True),
        Case("sparse-out-of-range", m, _edited(_sparse(np.array([0, 1, 99]))), "outside the dense dims"),
        Case("sparse-duplicate", m, _edited(_sparse(np.array([0, 1, 1]))), "appears twice"),
        Case("sparse-huge", m, _edited(_sparse(dims=[2**16, 2**16])), "element limit"),
        Case("sparse-constant", m, _edited(_sparse_constant), "sparse tensor"),
        Case("cycle", m, _edited(_cycle), "cycle"),
        Case("dangling-input", m, _edited(_dangling), "'nowhere', which nothing produces"),
        Case("produced-twice", m, _edited(_twice), "produced twice"),
        Case("nan-weight", m, _edited(_nan("w1", np.nan)), "weight 'w1' holds 1 NaN"),
        Case("inf-bias", m, _edited(_nan("b2", np.inf)), "weight 'b2' holds 1 NaN or Inf"),
        Case("inf-constant-node", m, _edited(_constant_nan), "weight 'w2' holds 1 NaN or Inf"),
        Case("no-graph", m, _edited(_no_graph), "no graph"),
        Case("empty-graph", m, _edited(_empty_graph), "empty graph"),
        Case("no-default-opset", m, _edited(_no_opset), "no default-domain"),
    ]
    return cases


# --- data cases ----------------------------------------------------------------------------


def _zip_of(members: dict[str, bytes], *, method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _npy_header(shape: tuple[int, ...], descr: str = "<f4", body: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + body


def _bomb(folder: Path) -> Path:
    """2 MiB of zeros deflated to a few KiB: over a 1 MiB limit (the test passes max_bytes=2**20)."""
    body = _npy_header((2**19,)) + b"\0" * (2**21)
    (folder / "d.npz").write_bytes(_zip_of({"x.npy": body, "label.npy": _npy_bytes(np.zeros(4, np.int64))},
                                           method=zipfile.ZIP_DEFLATED))
    return folder / "d.npz"


def _bad_crc(folder: Path) -> Path:
    data = bytearray(_zip_of({k + ".npy": _npy_bytes(v) for k, v in good_data().items()}))
    i = data.index(b"\x93NUMPY") + 140  # a byte of x's payload
    data[i] ^= 0xFF
    (folder / "d.npz").write_bytes(bytes(data))
    return folder / "d.npz"


def _npz(members: dict[str, bytes], name: str = "d.npz", *, method: int = zipfile.ZIP_STORED) -> Callable[[Path], Path]:
    return _raw_bytes(name, _zip_of(members, method=method))


def _good_members(**extra: bytes) -> dict[str, bytes]:
    return {**{k + ".npy": _npy_bytes(v) for k, v in good_data().items()}, **extra}


def _onnx_as_data(folder: Path) -> Path:
    return write_model(mlp(), folder / "d.npz")


def _data_folder(folder: Path) -> Path:
    (folder / "d.npz").mkdir()
    return folder / "d.npz"


def _fortran(folder: Path) -> Path:
    data = good_data()
    np.savez(folder / "d.npz", x=np.asfortranarray(data["x"]), label=data["label"])
    return folder / "d.npz"


def _truncated_npz(folder: Path) -> Path:
    data = _zip_of(_good_members())
    (folder / "d.npz").write_bytes(data[: len(data) // 2])
    return folder / "d.npz"


def data_cases() -> list[Case]:
    """The hostile data files (every one named in the message by its path)."""
    d = "data"
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    return [
        Case("zip-bomb", d, _bomb, "over the 1,048,576-byte limit"),
        Case("npy-absurd-shape", d, _npz(_good_members(**{"x.npy": _npy_header((2**40, 4))})), "over the"),
        Case("npy-shape-beyond-data", d, _npz(_good_members(**{"x.npy": _npy_header((1000, 4), body=b"\0" * 64)})),
             "only 64 bytes follow"),
        Case("npy-negative-shape", d, _npz(_good_members(**{"x.npy": _npy_header((-4, 4))})), "not a valid .npy header"),
        Case("npy-bad-header", d, _npz(_good_members(**{"x.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': os.system}   \n"})),
             "not a valid .npy header"),
        Case("npy-bad-magic-version", d, _npz(_good_members(**{"x.npy": b"\x93NUMPY\x09\x00" + b"\0" * 20})),
             "format version (9, 0) is not supported"),
        Case("object-array", d, _npz(_good_members(**{"x.npy": obj.getvalue()})), "without pickles"),
        Case("structured-dtype", d, _npz(_good_members(**{"x.npy": _npy_bytes(np.zeros(4, [("a", "<f4")]))})),
             "not a plain numeric type"),
        Case("string-dtype", d, _npz(_good_members(**{"x.npy": _npy_bytes(np.array(["abc"] * 4))})),
             "not a plain numeric type"),
        Case("member-not-npy", d, _npz(_good_members(**{"run.py": b"import os\n"})), "not an .npy array"),
        Case("pickle-as-data", d, _raw_bytes("d.npz", _pickle_bytes()), "pickle"),
        Case("onnx-as-data", d, _onnx_as_data, "an ONNX model, not an .npz"),
        Case("text-as-data", d, _raw_bytes("d.npz", b"x,label\n1,2\n"), "a text file"),
        Case("empty-data", d, _raw_bytes("d.npz", b""), "not an .npz data file"),
        Case("truncated-npz", d, _truncated_npz, "not a readable .npz"),
        Case("bad-crc", d, _bad_crc, "not a readable .npz"),
        Case("folder-as-data", d, _data_folder, "is not a file"),
        Case("missing-data", d, lambda folder: folder / "absent.npz", "file not found"),
        Case("empty-zip", d, _npz({}), "no array named 'x'"),
        Case("npy-single-array", d, _raw_bytes("d.npy", _npy_bytes(good_data()["x"])), ok=True),
        Case("fortran-order", d, _fortran, ok=True),
        Case("deflated-valid", d, _npz(_good_members(), method=zipfile.ZIP_DEFLATED), ok=True),
    ]


# --- recipe cases --------------------------------------------------------------------------


def _recipe(text: str | bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "r.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    return make


def _laughs(levels: int = 9, width: int = 9) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def recipe_cases() -> list[Case]:
    """Hostile recipe texts (refused while parsing, before any model is read)."""
    r = "recipe"
    return [
        Case("billion-laughs", r, _recipe(_laughs()), "alias bomb"),
        Case("self-alias", r, _recipe("a: &a [1, *a]\n"), "alias bomb"),
        Case("deep-flow-seq", r, _recipe("x: " + "[" * 5000 + "]" * 5000 + "\n"), "nested more than 50"),
        Case("deep-flow-map", r, _recipe("{a: " * 200 + "1" + "}" * 200 + "\n"), "nested more than 50"),
        Case("deep-block", r, _recipe("".join(" " * i + f"k{i}:\n" for i in range(120)) + " " * 120 + "v\n"),
             "nested more than 50"),
        Case("alias-chain-depth", r, _recipe("a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 80))),
             "nest more than 50"),
        Case("python-tag", r, _recipe("!!python/object/apply:os.system ['echo pwned']\n"), "no YAML tags"),
        Case("python-name-tag", r, _recipe("models: !!python/name:os.system\n"), "no YAML tags"),
        Case("invalid-yaml", r, _recipe("models: [\n"), "not valid YAML at line"),
        Case("huge-text", r, _recipe("# " + "x" * 1_100_000 + "\n"), "over the 1,000,000"),
        Case("binary-recipe", r, _recipe(b"\xff\xfe\x00models: 1\n"), "recipe"),
    ]


def all_cases() -> list[Case]:
    return model_cases() + data_cases() + recipe_cases()
