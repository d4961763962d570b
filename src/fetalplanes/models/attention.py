"""Attention blocks that refine a backbone's last feature map (B, C, H, W) -> same shape.

All blocks are written with plain convolutions, matmuls and softmax so they export to ONNX
and quantize cleanly; each keeps the input shape so the block's output is the natural
Grad-CAM target layer for every backbone.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from fetalplanes.core.errors import UsageError


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018): global context re-weights channels."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3), keepdim=True)
        w = torch.sigmoid(self.fc2(torch.relu(self.fc1(w))))
        return x * w


# Padding of CBAM's spatial-gate convolution. 'zeros' (Woo et al.'s choice, and every
# checkpoint written before spec format 1.2) invents a dark border around the pooled map: on a
# 4x4 map a 7x7 kernel then reads mostly border, and the gate learns a fixed, position-only
# pattern. 'replicate' extends the map's own edge values, so a uniform input gives a uniform
# gate and the gate can only vary with the image. 'reflect' needs a map side > kernel_size // 2.
SPATIAL_PADDINGS: tuple[str, ...] = ("replicate", "reflect", "zeros")
DEFAULT_SPATIAL_PADDING = "replicate"

# Normalisation of the spatial gate's logits. 'batch' is Woo et al.'s released CBAM
# (github.com/Jongchan/attention-module: the spatial branch is Conv-BatchNorm, then sigmoid).
# Without it ('none', every checkpoint before spec format 1.3) the logits scale with the
# backbone's activations: the fine-tuned demo's gate sat at 0.997 on every cell of every image,
# i.e. it passed the features through and attended to nothing (benchmarks/bench_attention_gate.py).
# BatchNorm keeps the logits near unit scale, so the sigmoid stays where it can discriminate.
SPATIAL_NORMS: tuple[str, ...] = ("batch", "none")
DEFAULT_SPATIAL_NORM = "batch"

# Options whose default changed between releases: ``ModelConfig`` writes them into every new
# config, so the spec of each model says which behaviour it was trained with.
RECORDED_DEFAULTS: dict[str, dict[str, object]] = {
    "cbam": {"spatial_padding": DEFAULT_SPATIAL_PADDING, "spatial_norm": DEFAULT_SPATIAL_NORM},
}


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel then spatial attention.

    The spatial gate is what lets the head focus on the anatomy (skull, femur, stomach) rather
    than on the whole fan, which is why it is the default refinement here. ``spatial_padding``
    (one of :data:`SPATIAL_PADDINGS`) is how its 7x7 convolution sees past the map's edge;
    ``spatial_norm`` (one of :data:`SPATIAL_NORMS`) whether its logits pass a BatchNorm, as in
    the authors' released code. Models written before spec format 1.2 load with 'zeros'
    padding, before 1.3 with no norm (``core.spec.migrate``).

    Raises:
        UsageError: an unknown ``spatial_padding`` or ``spatial_norm`` (the valid ones listed).
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7,
                 spatial_padding: str = DEFAULT_SPATIAL_PADDING, spatial_norm: str = DEFAULT_SPATIAL_NORM) -> None:
        super().__init__()
        check_choices("cbam", {"spatial_padding": spatial_padding, "spatial_norm": spatial_norm})
        hidden = max(8, channels // reduction)
        self.spatial_padding, self.spatial_norm_kind = spatial_padding, spatial_norm
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        # padding_mode changes no parameter, so the state dict is the same for every padding.
        # With BatchNorm the conv's bias is redundant (BN subtracts the mean), as in the reference.
        batch = spatial_norm == "batch"
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, padding_mode=spatial_padding,
                                 bias=not batch)
        self.spatial_norm = nn.BatchNorm2d(1) if batch else nn.Identity()

    def channel_refined(self, x: torch.Tensor) -> torch.Tensor:
        """The channel-attention half: (B, C, H, W) -> (B, C, H, W)."""
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + mx)

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial gate in (0, 1), (B, 1, H, W), for channel-refined features ``x``."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self._normalised(self.spatial(pooled)))

    def _normalised(self, logits: torch.Tensor) -> torch.Tensor:
        norm = self.spatial_norm
        # (The shape is read only when training: an exported graph keeps its dynamic batch axis.)
        if isinstance(norm, nn.BatchNorm2d) and norm.training and logits[:, 0].numel() == 1:
            # One logit (a training batch of one image whose map is 1x1: a frozen backbone at a
            # small image size, last batch of an epoch) has no batch statistics, and torch's
            # BatchNorm refuses it. Normalise with the running statistics, as at inference,
            # and leave them as they are; the affine still learns.
            return F.batch_norm(logits, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                                training=False, eps=norm.eps)
        return norm(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channel_refined(x)
        return x * self.spatial_gate(x)


class SpatialMHSA(nn.Module):
    """Multi-head self-attention over the H*W spatial tokens of a feature map.

    Written with explicit matmul/softmax (no fused SDPA) so the ONNX graph uses standard ops.
    A depthwise 3x3 convolution gives size-agnostic positional information, and a zero-init
    residual gate makes the block start as the identity, so fine-tuning begins from the
    pretrained backbone's features.
    """

    def __init__(self, channels: int, heads: int = 4, dim: int = 256) -> None:
        super().__init__()
        if dim % heads:
            raise UsageError(f"attention dim {dim} must be divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.pos = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.qkv = nn.Conv2d(channels, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = x + self.pos(x)
        q, k, v = self.qkv(y).reshape(b, 3, self.heads, self.head_dim, h * w).unbind(1)
        attn = torch.matmul(q.transpose(-2, -1), k) * (1.0 / math.sqrt(self.head_dim))
        attn = torch.softmax(attn, dim=-1)  # (b, heads, hw, hw)
        out = torch.matmul(v, attn.transpose(-2, -1))  # (b, heads, head_dim, hw)
        out = self.proj(out.reshape(b, self.heads * self.head_dim, h, w))
        return x + self.gamma * out


class NoAttention(nn.Identity):
    """The ablation: backbone features go straight to pooling (kept as a module so it is
    still a hookable CAM target layer)."""

    def __init__(self, channels: int) -> None:
        super().__init__()


ATTENTIONS: dict[str, Callable[..., nn.Module]] = {
    "cbam": CBAM,
    "se": SqueezeExcite,
    "mhsa": SpatialMHSA,
    "none": NoAttention,
}


# The valid values of each block's options (its other options take any value its code accepts).
OPTION_CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "cbam": {"spatial_padding": SPATIAL_PADDINGS, "spatial_norm": SPATIAL_NORMS},
}


def check_attention_kwargs(kind: str, kwargs: dict[str, object]) -> None:
    """Raise UsageError when block ``kind`` does not take an option of ``kwargs`` (its options
    listed) or an option's value is not one of its :data:`OPTION_CHOICES` (the choices listed).

    Called when a config is read (``models.registry.ModelConfig``), so a typo in a YAML or a
    variants file fails there, naming the file, not later when the model is built.
    """
    params = inspect.signature(ATTENTIONS[kind]).parameters.values()
    takes = [p.name for p in params if p.name != "channels" and p.kind is not p.VAR_KEYWORD]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params)  # a factory taking **kwargs checks its own
    unknown = [] if open_ended else sorted(set(kwargs) - set(takes))
    if unknown:
        raise UsageError(f"attention {kind!r} does not take attention_kwargs {unknown}; it takes {takes}")
    check_choices(kind, kwargs)


def check_choices(kind: str, kwargs: dict[str, object]) -> None:
    """Raise UsageError when an option of block ``kind`` is not one of its :data:`OPTION_CHOICES`."""
    for key, choices in OPTION_CHOICES.get(kind, {}).items():
        if key in kwargs and kwargs[key] not in choices:
            raise UsageError(f"unknown {kind} {key} {kwargs[key]!r}; choose one of {list(choices)}")


def create_attention(kind: str, channels: int, **kwargs: object) -> nn.Module:
    """Build an attention block by name, listing the valid names on error.

    ``kwargs`` are the block's own options (a model's ``attention_kwargs``), e.g.
    ``spatial_padding='zeros'`` for CBAM; an option the block does not take is a ValueError.
    """
    try:
        factory = ATTENTIONS[kind]
    except KeyError:
        raise UsageError(f"unknown attention {kind!r}; choose one of {sorted(ATTENTIONS)}") from None
    check_attention_kwargs(kind, kwargs)
    try:
        return factory(channels, **kwargs)
    except TypeError as err:  # an unknown keyword: name the block and what it was given
        raise UsageError(f"attention {kind!r} does not take attention_kwargs {sorted(kwargs)} ({err})") from None
