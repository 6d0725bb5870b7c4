"""The DDPM U-Net (Ho et al. 2020, App. B), which the DDIM paper reuses unchanged.

A PixelCNN++-style U-Net: residual blocks with GroupNorm and swish, a sinusoidal timestep
embedding added in every block, self-attention at chosen resolutions. With `num_classes` set, a
learned class embedding (num_classes + 1 rows, the last the "null" class of classifier-free
guidance, Ho & Salimans 2022) is added to the timestep embedding. Module names follow the
official PyTorch port (`temb.dense.0`, `down.0.block.0.conv1`, `down.1.attn.0.q`, `mid.block_1`,
`up.3.upsample.conv`, `norm_out`, `conv_out`, …) so published checkpoints load without renaming.
The network knows no diffusion maths: it maps (x_t, t[, y]) to one tensor shaped like x_t.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the U-Net; the defaults are the DDPM CIFAR-10 model (35.7M parameters)."""

    resolution: int = 32
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    norm_groups: int = 32
    num_classes: int | None = None  # class-conditional with this many classes (None: unconditional)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        for name in (
            "resolution",
            "in_channels",
            "out_channels",
            "ch",
            "num_res_blocks",
            "norm_groups",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"unet.{name} must be a positive integer, got {value!r}")
        if self.ch < 4 or self.ch % 2:
            raise ValueError(f"unet.ch must be even and >= 4 (timestep embedding), got {self.ch}")
        if not self.ch_mult or any(not isinstance(m, int) or m < 1 for m in self.ch_mult):
            raise ValueError(f"unet.ch_mult must be positive integers, got {self.ch_mult}")
        for m in self.ch_mult:
            if (self.ch * m) % self.norm_groups:
                raise ValueError(
                    f"unet: every level's channels (ch * ch_mult = {self.ch * m}) must be "
                    f"divisible by norm_groups={self.norm_groups}"
                )
        factor = 2 ** (len(self.ch_mult) - 1)
        if self.resolution % factor:
            raise ValueError(
                f"unet.resolution {self.resolution} must be divisible by 2^(levels - 1) = {factor} "
                f"for ch_mult of length {len(self.ch_mult)}"
            )
        reachable = self.resolutions()
        for r in self.attn_resolutions:
            if r not in reachable:
                raise ValueError(
                    f"unet.attn_resolutions entry {r} is not one of the model's resolutions "
                    f"{', '.join(map(str, reachable))}"
                )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"unet.dropout must be in [0, 1), got {self.dropout}")
        k = self.num_classes
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ValueError(f"unet.num_classes must be a positive integer or absent, got {k!r}")

    def resolutions(self) -> tuple[int, ...]:
        """The feature-map size of each level, top to bottom."""
        return tuple(self.resolution // 2**i for i in range(len(self.ch_mult)))

    def to_dict(self) -> dict:
        """The config as plain data; `num_classes` only when set, so unconditional configs are unchanged."""
        items = {k: v for k, v in asdict(self).items() if not (k == "num_classes" and v is None)}
        return {"type": "unet", **{k: list(v) if isinstance(v, tuple) else v for k, v in items.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"type"}
        if unknown:
            raise ValueError(f"unknown U-Net config field(s): {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in d.items() if k in known})


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of integer timesteps (B,) → (B, dim): [sin(t·f_k), cos(t·f_k)],
    f_k = 10000^(−k/(dim/2 − 1)) (the tensor2tensor variant used by DDPM)."""
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000) / (half - 1))
    )
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]  # (B, C, 1, 1) broadcast
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions, with a residual connection."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = _norm(ch, groups)
        self.q, self.k, self.v = (nn.Conv2d(ch, ch, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        q, k, v = (m(hn).reshape(b, c, h * w).transpose(1, 2) for m in (self.q, self.k, self.v))  # (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √C) v, (B, HW, C)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "conv"):
            return self.conv(F.pad(x, (0, 1, 0, 1)))  # TF "SAME" padding for stride 2
        return F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    def __init__(self, ch: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


def _level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    return level


class UNet(nn.Module):
    """ε_θ(x_t, t[, y]) of DDPM: (B, C_in, R, R), int64 timesteps (B,) and, for a conditional
    net, int64 classes (B,) in [0, num_classes] (num_classes = the null class) → (B, C_out, R, R)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        temb_ch, g = 4 * c.ch, c.norm_groups
        chans = [c.ch * m for m in c.ch_mult]  # output channels of each level
        res = c.resolutions()

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(c.ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)

        self.down = nn.ModuleList()
        skip_chans, block_in = [c.ch], c.ch  # channels of every tensor kept for the skips
        for i, out in enumerate(chans):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(ResnetBlock(block_in, out, temb_ch, c.dropout, g))
                if res[i] in c.attn_resolutions:
                    attns.append(AttnBlock(out, g))
                block_in = out
                skip_chans.append(out)
            level = _level(blocks, attns)
            if i != len(chans) - 1:
                level.downsample = Downsample(out, c.resamp_with_conv)
                skip_chans.append(out)
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, temb_ch, c.dropout, g)
        self.mid.attn_1 = AttnBlock(block_in, g)
        self.mid.block_2 = ResnetBlock(block_in, block_in, temb_ch, c.dropout, g)

        up_levels: list[nn.Module] = []
        for i in reversed(range(len(chans))):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in + skip_chans.pop(), chans[i], temb_ch, c.dropout, g))
                if res[i] in c.attn_resolutions:
                    attns.append(AttnBlock(chans[i], g))
                block_in = chans[i]
            level = _level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(block_in, c.resamp_with_conv)
            up_levels.insert(0, level)  # up[i] is level i, as in the official code
        self.up = nn.ModuleList(up_levels)

        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, c.out_channels, 3, padding=1)
        if c.num_classes is not None:  # created last: the other weights initialise as unconditionally
            self.class_embedding = nn.Embedding(c.num_classes + 1, temb_ch)  # last row: the null class

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """y: class labels (B,) of a conditional net; None means the null class (unconditional)."""
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](timestep_embedding(t, self.config.ch))))
        if self.config.num_classes is not None:
            y = torch.full_like(t, self.config.num_classes) if y is None else y
            temb = temb + self.class_embedding(y.to(temb.device))  # (B, 4·ch)
        elif y is not None:
            raise ValueError("this U-Net is unconditional (num_classes is not set): it takes no class labels")

        hs = [self.conv_in(x)]
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(hs[-1], temb)
                hs.append(level.attn[j](h) if level.attn else h)
            if hasattr(level, "downsample"):
                hs.append(level.downsample(hs[-1]))

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)

        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                h = level.attn[j](h) if level.attn else h
            if hasattr(level, "upsample"):
                h = level.upsample(h)

        return self.conv_out(F.silu(self.norm_out(h)))
