"""Spatial ops on the chip (frontends/spatial.py): simulated cycles, launches and the MACs the
matrix engine runs per useful MAC (transposed convolution by zero insertion spends s^d times the
useful MACs; interpolation as a matmul spends in-size MACs per output). Timing-only.

    PYTHONPATH=src python benchmarks/bench_spatial.py
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import vnpu

warnings.filterwarnings("ignore")


class Fn(nn.Module):
    def __init__(self, f) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


def useful_macs_convT(m: nn.ConvTranspose2d, x: torch.Tensor) -> int:
    # every input pixel meets every kernel tap once: N*H*W * C_in * (O/g) * kh*kw
    n, c, h, w = x.shape
    return n * h * w * c * (m.out_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]


CASES = {
    "conv1d 256->256 k3 L=4000 (wav2vec2-like)": (nn.Conv1d(256, 256, 3, padding=1), (1, 256, 4000), None),
    "conv2d 64->64 k3 56x56 (reference)": (nn.Conv2d(64, 64, 3, padding=1), (1, 64, 56, 56), None),
    "conv3d 32->32 k3 8x28x28": (nn.Conv3d(32, 32, 3, padding=1), (1, 32, 8, 28, 28), None),
    "convT2d 128->64 k2 s2 28x28 (UNet up)": (nn.ConvTranspose2d(128, 64, 2, stride=2), (1, 128, 28, 28), "convT"),
    "convT2d 128->64 k4 s2 p1 28x28": (nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1), (1, 128, 28, 28), "convT"),
    "group_norm 32 groups 256x32x32": (nn.GroupNorm(32, 256), (1, 256, 32, 32), None),
    "bilinear x2 64x56x56": (Fn(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear")), (1, 64, 56, 56), None),
    "nearest x2 64x56x56": (Fn(lambda x: F.interpolate(x, scale_factor=2, mode="nearest")), (1, 64, 56, 56), None),
    "maxpool3d k3 s2 32x16x56x56": (nn.MaxPool3d(3, 2, 1), (1, 32, 16, 56, 56), None),
    "avgpool2d k3 s2 ceil no-pad-count 64x56x56": (nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                                                   (1, 64, 56, 56), None),
}


def main() -> None:
    print(f"{'op':46s} {'cycles':>11s} {'launches':>8s} {'MACs run / useful':>18s}")
    for name, (m, shape, kind) in CASES.items():
        torch.manual_seed(0)
        x = torch.randn(shape)
        cm = vnpu.compile(m.eval(), (x,), strict=True)
        prof = cm.profile()
        launches = [l for l in cm.program.launches if hasattr(l, "flops")]
        ratio = ""
        if kind == "convT":
            run = sum(l.flops for l in launches if l.kind == "conv") / 2
            ratio = f"{run / useful_macs_convT(m, x):.2f}"
        print(f"{name:46s} {prof.cycles:11.0f} {len(launches):8d} {ratio:>18s}")


if __name__ == "__main__":
    main()
