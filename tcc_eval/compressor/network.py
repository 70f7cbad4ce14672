"""The compressor f_theta: a small fully convolutional 1-D network over the visual-token sequence.

Input is the layer-0 instruction->visual attention of one sample (N_v values in sequence order, video
frames concatenated); output is a distribution over the same tokens whose top-k are kept. Five
depthwise-separable conv layers (32-64-128-256-512 channels), a 1x1 conv to one channel, softmax over
tokens (METHOD.md, Stage B). Samples of different length share a batch through a padding mask; padded
positions are zeroed after every layer and excluded from norms and the softmax, so a sample scores the
same alone or in any batch.

Defaults (the paper leaves them open):
- kernel_size 5: five layers give a receptive field of 21 tokens, i.e. a stretch of one raster row of a
  typical 24-40 token wide grid; larger kernels are one flag away.
- norm "layer": per-token LayerNorm over channels. It never mixes positions or samples, so it is exact
  for any N, any padding and batch size 1; "group"/"batch" use masked statistics over valid tokens.
- input_scale "n": A * N_v, so uniform attention maps to 1 whatever the number of tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = (32, 64, 128, 256, 512)
NORMS = ("none", "layer", "group", "batch")
INPUT_SCALES = ("n", "log", "none")
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}
LOG_FLOOR = 1e-6


@dataclass
class CompressorConfig:
    """Network hyper-parameters; stored in every checkpoint so it can be rebuilt exactly."""

    kernel_size: int = 5
    activation: str = "gelu"
    norm: str = "layer"
    input_scale: str = "n"
    channels: tuple[int, ...] = CHANNELS
    groups: int = 8  # channel groups for norm="group"

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1 (keeps 'same' length), got {self.kernel_size}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.input_scale not in INPUT_SCALES:
            raise ValueError(f"input_scale must be one of {INPUT_SCALES}, got {self.input_scale!r}")
        if self.norm == "group" and any(c % self.groups for c in self.channels):
            raise ValueError(
                f"norm='group' needs every channel count {self.channels} divisible by groups={self.groups}"
            )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["channels"] = list(self.channels)
        return out


class MaskedNorm(nn.Module):
    """LayerNorm over channels per token, or Group/BatchNorm with statistics over valid tokens only."""

    def __init__(self, kind: str, channels: int, groups: int = 8, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.kind, self.groups, self.momentum, self.eps = kind, groups, momentum, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        if kind == "batch":
            self.register_buffer("running_mean", torch.zeros(channels))
            self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, C, N); mask: (B, 1, N) float, 1 on real tokens."""
        if self.kind == "layer":
            normed = F.layer_norm(x.transpose(1, 2), (x.shape[1],), self.weight, self.bias, self.eps)
            return normed.transpose(1, 2)
        if self.kind == "group":
            b, c, n = x.shape
            g = x.view(b, self.groups, c // self.groups, n)
            m = mask.view(b, 1, 1, n)
            count = m.sum(dim=(2, 3), keepdim=True).clamp_min(1) * (c // self.groups)
            mean = (g * m).sum(dim=(2, 3), keepdim=True) / count
            var = (((g - mean) * m) ** 2).sum(dim=(2, 3), keepdim=True) / count
            x = ((g - mean) / torch.sqrt(var + self.eps)).view(b, c, n)
            return x * self.weight[None, :, None] + self.bias[None, :, None]
        if self.training:  # batch norm: statistics over every real token of the batch
            count = mask.sum().clamp_min(1)
            mean = (x * mask).sum(dim=(0, 2), keepdim=True) / count
            var = (((x - mean) * mask) ** 2).sum(dim=(0, 2), keepdim=True) / count
            with torch.no_grad():
                self.running_mean.lerp_(mean.flatten(), self.momentum)
                self.running_var.lerp_(var.flatten(), self.momentum)
        else:
            mean, var = self.running_mean[None, :, None], self.running_var[None, :, None]
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[None, :, None] + self.bias[None, :, None]


class SeparableBlock(nn.Module):
    """Depthwise conv (one filter per channel) -> pointwise 1x1 conv -> norm -> activation."""

    def __init__(self, c_in: int, c_out: int, config: CompressorConfig):
        super().__init__()
        k = config.kernel_size
        self.depthwise = nn.Conv1d(c_in, c_in, k, padding=k // 2, groups=c_in)
        self.pointwise = nn.Conv1d(c_in, c_out, 1)
        self.norm = MaskedNorm(config.norm, c_out, config.groups) if config.norm != "none" else None
        self.act = ACTIVATIONS[config.activation]()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.pointwise(self.depthwise(x))
        if self.norm is not None:
            x = self.norm(x, mask)
        return self.act(x) * mask  # zero padding again, so the next conv sees a true sequence end


class TokenCompressor(nn.Module):
    """f_theta: layer-0 attention (B, 1, N) -> log-probabilities over tokens (B, N).

    Checkpoint metadata (``source_model``, ``modality``, ``train_stats``) is attached by
    ``load_compressor`` so a loaded module can be validated against the model it is attached to.
    """

    def __init__(self, config: CompressorConfig | None = None, **overrides: Any):
        super().__init__()
        if config is None:
            config = CompressorConfig(**overrides)
        elif overrides:
            raise ValueError("pass either a CompressorConfig or keyword hyper-parameters, not both")
        self.config = config
        widths = (1, *config.channels)
        self.blocks = nn.ModuleList(SeparableBlock(a, b, config) for a, b in pairwise(widths))
        self.head = nn.Conv1d(widths[-1], 1, 1)
        self.source_model: dict[str, Any] = {}
        self.modality: str | None = None
        self.train_stats: dict[str, Any] = {}

    def scale_input(self, a0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """a0, mask: (B, 1, N). Applies the configured input scaling on real tokens only."""
        n = mask.sum(dim=-1, keepdim=True)
        if self.config.input_scale == "n":
            x = a0 * n
        elif self.config.input_scale == "log":
            x = torch.log((a0 * n).clamp_min(LOG_FLOOR))
        else:
            x = a0
        return x * mask

    def forward(self, a0: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """a0: (B, 1, N) or (B, N) attention; mask: (B, N) bool/float, True on real tokens.

        Returns (B, N) log-probabilities; padded positions get -inf (probability 0)."""
        if a0.dim() == 2:
            a0 = a0[:, None]
        if a0.dim() != 3 or a0.shape[1] != 1:
            raise ValueError(f"expected attention of shape (B, 1, N) or (B, N), got {tuple(a0.shape)}")
        a0 = a0.float()
        m = torch.ones_like(a0) if mask is None else mask.to(a0.dtype).view(a0.shape[0], 1, -1)
        x = self.scale_input(a0, m)
        for block in self.blocks:
            x = block(x, m)
        logits = self.head(x)[:, 0]
        logits = logits.masked_fill(m[:, 0] == 0, float("-inf"))
        return torch.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def predict(self, a0: torch.Tensor) -> torch.Tensor:
        """Scores for one sample: a0 (N,) -> (N,) log-probabilities (higher = keep), on a0's device."""
        if a0.dim() != 1:
            raise ValueError(f"predict takes one sample's (N_v,) attention vector, got shape {tuple(a0.shape)}")
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            out = self(a0.detach().to(device, torch.float32)[None, None])[0]
        finally:
            self.train(was_training)
        return out.to(a0.device)


def pad_batch(vectors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D vectors into (B, N_max) and a bool mask (True on real entries)."""
    n = max(int(v.numel()) for v in vectors)
    out = torch.zeros(len(vectors), n, dtype=torch.float32)
    mask = torch.zeros(len(vectors), n, dtype=torch.bool)
    for i, v in enumerate(vectors):
        out[i, : v.numel()] = v.float()
        mask[i, : v.numel()] = True
    return out, mask


def kl_loss(log_pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over samples of KL(target || prediction) = sum_i t_i (log t_i - log p_i), with 0 log 0 = 0.

    log_pred, target: (B, N); padded positions must have target 0 (their log_pred may be -inf)."""
    if mask is not None:
        target = target * mask
    safe_log_pred = torch.where(target > 0, log_pred, torch.zeros_like(log_pred))
    per_sample = torch.xlogy(target, target) - target * safe_log_pred
    return per_sample.sum(dim=-1).mean()


def make_target(relevance: torch.Tensor, drop_fraction: float = 0.5) -> torch.Tensor:
    """Training label from oracle relevance R_v: zero the bottom ``drop_fraction``, sum-normalise the rest.

    Negative relevance is clipped to 0. Ties are broken towards the earlier token (stable sort), like
    selection. A sample whose kept relevance sums to 0 gets a uniform target over the kept tokens."""
    r = relevance.detach().float().flatten().clamp_min(0)
    n = r.numel()
    if n == 0:
        raise ValueError("relevance is empty: the sample has no visual tokens; leave it out of training, as "
                         "load_labels does")
    keep = max(1, n - int(drop_fraction * n))
    order = torch.sort(r, descending=True, stable=True).indices[:keep]
    target = torch.zeros_like(r)
    target[order] = r[order]
    total = target.sum()
    if total <= 0:
        target[order] = 1.0
        total = target.sum()
    return target / total
