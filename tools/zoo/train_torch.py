#!/usr/bin/env python3
"""Train and export the torch families of the exporter zoo (run with the torch venv, see README.md).

Families: MobileNetV3-style classifier (torchvision-style blocks), DBNet-style segmenter, YOLO/CSP block stack,
CRNN (CNN + LSTM), plain digit CNNs at 28x28 and 16x16. Every model is exported with the legacy exporter
(``dynamo=False``, opset 17), input ``image`` (N, 1, H, W), output ``logits`` (N, classes) or ``prob``
(N, 1, 28, 28). Writes models/zoo/<name>.onnx, its manifest entry (training part) and a reference output
(.cache/zoo_ref/<name>.npz) that tools/zoo/record.py compares with onnxruntime.

    python tools/zoo/train_torch.py                 # every torch model
    python tools/zoo/train_torch.py --only crnn_mnist --only crnn_fashion
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo_common as zc  # noqa: E402

OPSET = 17
BATCH = 64

# name: family, arch, data, seed, steps, learning rate
SPECS: dict[str, dict] = {
    "mbv3_mnist_s0": dict(family="mobilenetv3", arch="mbv3", data="mnist", seed=0, steps=1200, lr=3e-3),
    "mbv3_mnist_s1": dict(family="mobilenetv3", arch="mbv3", data="mnist", seed=1, steps=1200, lr=3e-3),
    "mbv3_fashion": dict(family="mobilenetv3", arch="mbv3", data="fashion", seed=0, steps=1200, lr=3e-3),
    "dbnet_mnist_stroke": dict(family="dbnet", arch="dbnet", data="mnist_stroke", seed=0, steps=800, lr=3e-3),
    "dbnet_fashion_silhouette": dict(family="dbnet", arch="dbnet", data="fashion_silhouette", seed=0, steps=800,
                                     lr=3e-3),
    "csp_fashion": dict(family="yolo-csp", arch="csp", data="fashion", seed=0, steps=600, lr=3e-3),
    "csp_fashion_super4": dict(family="yolo-csp", arch="csp", data="fashion_super4", seed=0, steps=600, lr=3e-3),
    "crnn_mnist": dict(family="crnn", arch="crnn", data="mnist", seed=0, steps=1200, lr=3e-3),
    "crnn_fashion": dict(family="crnn", arch="crnn", data="fashion", seed=0, steps=1200, lr=3e-3),
    "digitcnn28_mnist": dict(family="digit-cnn", arch="digitcnn", data="mnist", seed=0, steps=1000, lr=2e-3),
    "digitcnn16_mnist": dict(family="digit-cnn", arch="digitcnn", data="mnist16", seed=0, steps=1000, lr=2e-3),
}

ARCH_DOC = {
    "mbv3": ("MobileNetV3-small-like (torchvision's block structure, own module): stem "
             "Conv 3x3 s2 16 (1 input channel) + BN + HardSwish; blocks (kernel, expand, out, SE, act, stride) "
             "(3,16,16,SE,ReLU,2) (3,48,24,-,ReLU,1) (5,64,24,SE,HS,1, residual) (5,96,32,SE,HS,2); "
             "1x1 conv 192 + HardSwish; GAP; Linear 128 + HardSwish; Dropout; Linear. Depthwise convs, "
             "squeeze-excitation (GAP, 1x1, ReLU, 1x1, HardSigmoid, Mul), BN folded by the exporter."),
    "dbnet": ("DBNet-like: depthwise-separable MobileNet backbone (C1 16ch 14x14, C2 24ch 7x7, C3 32ch 7x7, "
              "HardSwish), FPN (1x1 laterals to 16ch, top-down Add with nearest Resize x2), 3x3 smoothing convs "
              "to 8ch, Resize x2 of the 7x7 levels, channel Concat (24ch at 14x14); head Conv 3x3 + BN + ReLU, "
              "ConvTranspose 2x2 s2 (28x28) + BN + ReLU, Conv 1x1, Sigmoid -> probability map."),
    "csp": ("YOLOv5-style: Conv = Conv + BN + SiLU (exported as x*Sigmoid(x)); stem 16 (28x28), Conv s2 32 "
            "(14x14), C3(32) with 1 residual bottleneck (CSP split: two 1x1 branches, Concat, 1x1), Conv s2 64 "
            "(7x7), C3(64), SPPF (3 chained MaxPool 5, Concat); neck 1x1 to 32, Upsample x2 (Resize), Concat "
            "with the 14x14 level, C3(64->32, no shortcut); GAP; Linear."),
    "crnn": ("CRNN-like: Conv 3x3 16 + BN + ReLU + MaxPool 2 (14x14), Conv 3x3 32 + BN + ReLU + MaxPool 2 "
             "(7x7); the 7 columns (32ch x 7 rows = 224 features each) left to right as a sequence into an LSTM "
             "(hidden 64); the last step's output into Linear."),
    "digitcnn": ("Conv 3x3 8 + ReLU + MaxPool 2, Conv 3x3 16 + ReLU + MaxPool 2, Flatten (16*7*7=784 at "
                 "28x28, 16*4*4=256 at 16x16), Linear 64 + ReLU, Linear 10."),
}


# ----------------------------------------------------------------------------- architectures
class SqueezeExcitation(nn.Module):
    """x * HardSigmoid(W2 ReLU(W1 GAP(x))) (as torchvision's SqueezeExcitation in MobileNetV3)."""

    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    """MobileNetV3 block: [1x1 expand + BN + act] -> depthwise kxk + BN + act -> [SE] -> 1x1 project + BN."""

    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: type[nn.Module], s: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(conv_bn(cin, exp, 1, act=act))
        layers.append(conv_bn(exp, exp, k, s, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcitation(exp, max(8, (exp // 4 + 4) // 8 * 8)))
        layers.append(conv_bn(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def build_mbv3(n_out: int) -> nn.Module:
    """MobileNetV3-small-like, scaled down for 28x28 gray input."""
    return nn.Sequential(
        conv_bn(1, 16, 3, 2),                                             # 14x14
        InvertedResidual(16, 3, 16, 16, True, nn.ReLU, 2),                # 7x7
        InvertedResidual(16, 3, 48, 24, False, nn.ReLU, 1),
        InvertedResidual(24, 5, 64, 24, True, nn.Hardswish, 1),           # residual
        InvertedResidual(24, 5, 96, 32, True, nn.Hardswish, 2),           # 4x4
        conv_bn(32, 192, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(192, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, n_out))


def conv_bn(cin: int, cout: int, k: int, s: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.Hardswish):
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def dw_separable(cin: int, cout: int, s: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cin, 3, s, groups=cin), conv_bn(cin, cout, 1))


class DBNet(nn.Module):
    """(N, 1, 28, 28) -> probability map (N, 1, 28, 28)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(1, 16, 3, 2)                      # 14x14
        self.c1 = dw_separable(16, 16, 1)                     # 14x14
        self.c2 = dw_separable(16, 24, 2)                     # 7x7
        self.c3 = dw_separable(24, 32, 1)                     # 7x7
        self.lat = nn.ModuleList([nn.Conv2d(c, 16, 1, bias=False) for c in (16, 24, 32)])
        self.smooth = nn.ModuleList([nn.Conv2d(16, 8, 3, 1, 1, bias=False) for _ in range(3)])
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Sequential(nn.Conv2d(24, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.ConvTranspose2d(16, 16, 2, 2), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.c1(self.stem(x))
        c2 = self.c2(c1)
        c3 = self.c3(c2)
        in3 = self.lat[2](c3)
        in2 = self.lat[1](c2) + in3
        in1 = self.lat[0](c1) + self.up(in2)
        p1 = self.smooth[0](in1)
        p2 = self.up(self.smooth[1](in2))
        p3 = self.up(self.smooth[2](in3))
        return self.head(torch.cat([p1, p2, p3], dim=1))


def conv_silu(cin: int, cout: int, k: int = 1, s: int = 1) -> nn.Sequential:
    return conv_bn(cin, cout, k, s, act=nn.SiLU)


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = conv_silu(c, c, 1)
        self.cv2 = conv_silu(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck: two 1x1 branches, bottlenecks on one, channel Concat, 1x1."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True) -> None:
        super().__init__()
        c_ = c2 // 2
        self.cv1 = conv_silu(c1, c_)
        self.cv2 = conv_silu(c1, c_)
        self.m = Bottleneck(c_, shortcut)
        self.cv3 = conv_silu(2 * c_, c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], dim=1))


class SPPF(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1 = conv_silu(c, c // 2)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.cv2 = conv_silu(2 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], dim=1))


class CSPNet(nn.Module):
    def __init__(self, n_out: int) -> None:
        super().__init__()
        self.stem = conv_silu(1, 16, 3)
        self.down1 = conv_silu(16, 32, 3, 2)
        self.c3a = C3(32, 32)
        self.down2 = conv_silu(32, 64, 3, 2)
        self.c3b = C3(64, 64)
        self.sppf = SPPF(64)
        self.reduce = conv_silu(64, 32)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.c3c = C3(64, 32, shortcut=False)
        self.fc = nn.Linear(32, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.c3a(self.down1(self.stem(x)))
        p4 = self.sppf(self.c3b(self.down2(p3)))
        y = self.c3c(torch.cat([self.up(self.reduce(p4)), p3], dim=1))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class CRNN(nn.Module):
    def __init__(self, n_out: int) -> None:
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                 nn.MaxPool2d(2))
        self.rnn = nn.LSTM(32 * 7, 64)
        self.fc = nn.Linear(64, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.cnn(x)                                   # (N, 32, 7, 7)
        seq = f.permute(3, 0, 1, 2).flatten(2)            # (W=7, N, 32*7)
        out, _ = self.rnn(seq)
        return self.fc(out[-1])


def build_digitcnn(side: int) -> nn.Sequential:
    pooled = (side // 2) // 2
    return nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * pooled * pooled, 64), nn.ReLU(), nn.Linear(64, 10))


def build(arch: str, n_out: int, side: int) -> nn.Module:
    if arch == "mbv3":
        return build_mbv3(n_out)
    if arch == "dbnet":
        return DBNet()
    if arch == "csp":
        return CSPNet(n_out)
    if arch == "crnn":
        return CRNN(n_out)
    if arch == "digitcnn":
        return build_digitcnn(side)
    raise ValueError(arch)


# ----------------------------------------------------------------------------- training
def is_map(data: str) -> bool:
    return data in ("mnist_stroke", "fashion_silhouette")


def train(spec: dict, x: np.ndarray, y: np.ndarray) -> tuple[nn.Module, float]:
    """Adam + one-cycle LR for spec['steps'] steps of BATCH samples; returns (model in eval mode, seconds)."""
    zc.seed_python(spec["seed"])
    torch.manual_seed(spec["seed"])
    n_out = 1 if is_map(spec["data"]) else int(y.max()) + 1
    model = build(spec["arch"], n_out, x.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec["lr"], total_steps=spec["steps"], pct_start=0.15)
    gen = torch.Generator().manual_seed(spec["seed"])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    t0 = time.time()
    model.train()
    for step in range(spec["steps"]):
        idx = torch.randint(0, len(yt), (BATCH,), generator=gen)
        out = model(xt[idx])
        loss = F.binary_cross_entropy(out, yt[idx]) if is_map(spec["data"]) else F.cross_entropy(out, yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 200 == 0:
            zc.log(f"  step {step + 1}/{spec['steps']} loss {loss.item():.4f}")
    model.eval()
    return model, time.time() - t0


def predict(model: nn.Module, x: np.ndarray, bs: int = 500) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + bs])).numpy() for i in range(0, len(x), bs)])


def metric(data: str, out: np.ndarray, y: np.ndarray) -> dict:
    if is_map(data):
        pred, tgt = out > 0.5, y > 0.5
        return {"iou": float((pred & tgt).sum() / (pred | tgt).sum()), "pixel_agreement": float((pred == tgt).mean())}
    return {"accuracy": float((out.argmax(1) == y).mean())}


# ----------------------------------------------------------------------------- export
def export(model: nn.Module, name: str, side: int, out_name: str) -> Path:
    path = zc.ZOO / f"{name}.onnx"
    dummy = torch.zeros(2, 1, side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=[out_name],
                          dynamic_axes={"image": {0: "batch"}, out_name: {0: "batch"}})
    zc.fix_ir(path)
    return path


def run(name: str) -> None:
    spec = SPECS[name]
    x, y = zc.load_split(spec["data"], "train")
    xt, yt = zc.load_split(spec["data"], "test")
    zc.log(f"{name}: training on {len(x)} samples, {spec['steps']} steps of {BATCH}")
    model, secs = train(spec, x, y)
    m = metric(spec["data"], predict(model, xt), yt)
    zc.log(f"{name}: torch test {m} ({secs:.0f}s)")
    out_name = "prob" if is_map(spec["data"]) else "logits"
    export(model, name, x.shape[-1], out_name)
    ref_dir = zc.REPO / ".cache" / "zoo_ref"
    ref_dir.mkdir(parents=True, exist_ok=True)
    np.savez(ref_dir / f"{name}.npz", x=xt[:64], y=predict(model, xt[:64]))
    zc.update_manifest(name, {
        "file": f"zoo/{name}.onnx", "family": spec["family"], "arch": ARCH_DOC[spec["arch"]],
        "framework": f"pytorch {torch.__version__.split('+')[0]}",
        "exporter": f"torch.onnx legacy (dynamo=False, opset {OPSET}) from torch {torch.__version__.split('+')[0]}",
        "task": spec["data"], "seed": spec["seed"], "data": zc.split_record(spec["data"]),
        "training": {"steps": spec["steps"], "batch": BATCH, "optimizer": "Adam, one-cycle LR",
                     "max_lr": spec["lr"], "loss": "binary cross-entropy" if is_map(spec["data"]) else "cross-entropy",
                     "samples": "uniform with replacement from the train split", "threads": 1,
                     "seconds": round(secs, 1)},
        "framework_metric": m, "fixed_batch": False,
    })


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=sorted(SPECS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    for name in args.only or list(SPECS):
        run(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
