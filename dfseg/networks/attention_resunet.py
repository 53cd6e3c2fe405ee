"""Attention-gated residual U-Net (2D/3D) with optional deep supervision and lesion-presence head.

The encoder and decoder are MONAI residual units (``monai.networks.blocks.ResidualUnit``). Each
skip connection passes through an additive attention gate (Oktay et al. 2018, "Attention U-Net:
Learning where to look for the pancreas") whose gating signal ``g`` is the decoder feature of the
next coarser scale. Unlike MONAI's ``AttentionUnet``, the gate is evaluated at the coarse
resolution (the skip ``x`` is brought there by a strided ``stride x stride`` convolution, as in the
paper) and only the one-channel coefficient map ``alpha`` is interpolated back to the skip
resolution; intermediate channels are half the skip channels. This keeps the gates cheap. 1x1
convolutions run as einsum (:class:`Pointwise`), kernel = stride transposed convolutions as a 1x1
convolution plus pixel shuffle (:class:`SubpixelUp`), and the full-resolution decoder is fused in a
few channels (:class:`_NarrowOutputLevel`), so a training step costs a fraction of MONAI's
``AttentionUnet`` on CPU (``bench/networks.py`` measures it; docs/benchmarks.md has the numbers).

``forward`` is TorchScript-scriptable and returns

- eval mode, or training without deep supervision and presence head: the logits tensor
  ``(B, out_channels, *spatial)`` (what ``SlidingWindowInferer`` and bundle checks expect);
- training mode with ``deep_supervision`` and/or ``presence_head``: a list
  ``[logits, deep_1, ..., deep_k, presence]``: the full-resolution logits first, then the deep
  supervision logits from finer to coarser decoder scales (each at its own resolution, which
  MONAI ``DeepSupervisionLoss`` accepts: it resizes the target), then, when the presence head is
  on, the presence logit ``(B, 1)`` last. ``dfseg.losses.SegmentationLoss`` splits this list by
  tensor rank (2-D tensors are presence logits).

``forward_with_aux`` returns everything as a dict in any mode; ``attention_maps`` returns the gate
coefficients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.utils import get_act_layer

__all__ = ["AttentionGate", "AttentionResUNet", "Pointwise", "SubpixelUp"]


def _as_tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"expected {n} values (one per spatial dimension), got {value}")
    return value


class Pointwise(nn.Module):
    """1x1 convolution (a per-voxel linear map of the channels) computed with ``torch.einsum``.

    The same function and initialisation as ``Conv{2,3}d(in_channels, out_channels, kernel_size=1)``
    (weight ``(out, in)`` instead of ``(out, in, 1, 1[, 1])``), for any number of spatial
    dimensions. On CPU oneDNN runs 1x1 3D convolutions through a layout conversion; the einsum is a
    batched matrix product, which avoids it (several times faster forward + backward).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        bias: add a learned bias per output channel.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        # nn.Conv's default initialisation (fan_in = in_channels for a 1x1 kernel).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(in_channels)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("oc,bc...->bo...", [self.weight, x])
        bias = self.bias
        if bias is not None:
            y = y + bias.view([1, -1] + [1] * (x.dim() - 2))
        return y


class AttentionGate(nn.Module):
    """Additive attention gate evaluated at the gating signal's (coarse) resolution.

    ``alpha = sigmoid(psi(relu(theta(x_c) + phi(g))))``, where ``x_c`` is the skip ``x`` projected
    onto the coarse grid of ``g``. In ``AttentionResUNet`` that projection is the encoder's own
    downsampling convolution (kernel = stride) applied to ``x``, i.e. Oktay et al.'s strided
    ``W_x`` factorised through a layer the network computes anyway, so the gate runs no
    full-resolution convolution. ``alpha`` (one channel, in [0, 1]) is linearly interpolated to the
    skip resolution and multiplies ``x``.

    Args:
        spatial_dims: 2 or 3.
        coarse_skip_channels: channels of ``x_c``.
        gate_channels: channels of the gating feature ``g``.
        inter_channels: channels of the joint embedding (small keeps the gate cheap).
    """

    def __init__(self, spatial_dims: int, coarse_skip_channels: int, gate_channels: int, inter_channels: int) -> None:
        super().__init__()
        # No bias on theta: phi's bias already shifts the sum.
        self.theta = Pointwise(coarse_skip_channels, inter_channels, bias=False)
        self.phi = Pointwise(gate_channels, inter_channels)
        self.psi = Pointwise(inter_channels, 1)
        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"

    def coefficients(self, x: torch.Tensor, x_coarse: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Gate coefficients ``alpha`` (B, 1, *x.spatial) in [0, 1].

        Args:
            x: skip feature (B, C_x, *fine) (only its size is used).
            x_coarse: the skip projected onto the coarse grid (B, C_xc, *coarse).
            g: gating feature (B, C_g, *coarse).
        """
        alpha = torch.sigmoid(self.psi(F.relu(self.theta(x_coarse) + self.phi(g))))
        # Linear interpolation of values in [0, 1] stays in [0, 1].
        return F.interpolate(alpha, size=x.shape[2:], mode=self.mode, align_corners=False)

    def forward(self, x: torch.Tensor, x_coarse: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the gated skip ``x * alpha`` and ``alpha``."""
        alpha = self.coefficients(x, x_coarse, g)
        return x * alpha, alpha


class _EncoderLevel(nn.Module):
    """Downsampling convolution (kernel = stride) then a residual unit; returns both outputs."""

    def __init__(self, down: nn.Module, res: nn.Module) -> None:
        super().__init__()
        self.down = down
        self.res = res

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.down(x)
        return d, self.res(d)


class SubpixelUp(nn.Module):
    """Transposed convolution with kernel == stride, computed as a 1x1 convolution plus pixel shuffle.

    Mathematically identical to ``ConvTranspose{2,3}d(c_in, c_out, kernel_size=stride, stride=stride)``
    (each coarse voxel writes a ``stride``-sized block of fine voxels), but faster on CPU, where
    PyTorch's transposed 3D convolution falls back to a slow unfold/copy path.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the coarse input.
        out_channels: channels of the upsampled output.
        stride: upsampling factor per dimension.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: Sequence[int]) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.out_channels = out_channels
        self.stride = [int(v) for v in stride]
        block = 1
        for v in self.stride:
            block *= v
        self.conv = Pointwise(in_channels, out_channels * block, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        b = y.shape[0]
        c = self.out_channels
        s = self.stride
        if self.spatial_dims == 2:
            h, w = y.shape[2], y.shape[3]
            y = y.reshape(b, c, s[0], s[1], h, w).permute(0, 1, 4, 2, 5, 3)
            return y.reshape(b, c, h * s[0], w * s[1])
        d, h, w = y.shape[2], y.shape[3], y.shape[4]
        y = y.reshape(b, c, s[0], s[1], s[2], d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return y.reshape(b, c, d * s[0], h * s[1], w * s[2])


class _DecoderLevel(nn.Module):
    """One decoder scale: gate the skip with the coarser feature, upsample, add, fuse."""

    def __init__(
        self, spatial_dims: int, skip_channels: int, coarse_channels: int, stride: Sequence[int], fuse: nn.Module
    ) -> None:
        super().__init__()
        self.gate = AttentionGate(spatial_dims, coarse_channels, coarse_channels, max(skip_channels // 2, 4))
        # kernel == stride: non-overlapping transposed convolution (as nnU-Net), the cheapest learned upsampler.
        self.up = SubpixelUp(spatial_dims, coarse_channels, skip_channels, stride)
        # Additive fusion (up + gated skip) instead of concatenation halves the input channels of the
        # fusing convolution.
        self.fuse = fuse

    def forward(
        self, skip: torch.Tensor, skip_coarse: torch.Tensor, coarse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gated, alpha = self.gate(skip, skip_coarse, coarse)
        return self.fuse(self.up(coarse) + gated), alpha


class _NarrowOutputLevel(nn.Module):
    """The finest decoder scale, fused in a narrow ``fuse_channels``-wide space, with the output head.

    ``logits = head(act(up(coarse) + alpha * proj(skip) + b))``: the decoder's usual
    "upsample + gated skip, activation" at full resolution, but with the skip first projected by a
    1x1 ``proj`` from ``channels[0]`` to ``fuse_channels`` channels (``alpha`` is one value per voxel,
    so ``proj(alpha * skip) = alpha * proj(skip)``) and the upsampler writing ``fuse_channels``
    directly. Every full-resolution decoder tensor is then ``fuse_channels`` wide instead of
    ``channels[0]``, and the full-resolution tensors dominate a training step's cost. With ``proj``
    the identity and ``fuse_channels = channels[0]`` this is exactly the classic decoder level.
    """

    def __init__(
        self, spatial_dims: int, skip_channels: int, coarse_channels: int, stride: Sequence[int], out_channels: int,
        fuse_channels: int, act: tuple | str,
    ) -> None:
        super().__init__()
        self.gate = AttentionGate(spatial_dims, coarse_channels, coarse_channels, max(skip_channels // 2, 4))
        self.up = SubpixelUp(spatial_dims, coarse_channels, fuse_channels, stride)
        self.proj = Pointwise(skip_channels, fuse_channels, bias=False)
        bound = 1.0 / math.sqrt(skip_channels)
        self.bias = nn.Parameter(torch.empty(fuse_channels).uniform_(-bound, bound))
        self.bias_shape = [1, fuse_channels] + [1] * spatial_dims
        self.act = get_act_layer(act)
        self.head = Pointwise(fuse_channels, out_channels)

    def forward(
        self, skip: torch.Tensor, skip_coarse: torch.Tensor, coarse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.gate.coefficients(skip, skip_coarse, coarse)
        z = self.up(coarse) + alpha * self.proj(skip) + self.bias.view(self.bias_shape)
        return self.head(self.act(z)), alpha


class AttentionResUNet(nn.Module):
    """Residual U-Net with attention-gated skips, deep supervision and a lesion-presence head.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (``SelectModality``: 1 attn, 4 df, 5 combined).
        out_channels: output logit channels (1 for tumour vs background with sigmoid).
        channels: feature channels per scale, finest first; ``len(channels) - 1`` downsamplings.
        strides: downsampling factor between consecutive scales (``len(channels) - 1`` entries,
            each an int or one int per spatial dimension).
        num_res_units: convolutions per encoder scale below the finest: the downsampling convolution
            (kernel = stride) and a residual unit of ``num_res_units - 1`` convolutions. The finest
            encoder scale is one convolution; every decoder scale but the finest (see
            ``finest_decoder``) one residual unit of one convolution.
        kernel_size: convolution kernel size.
        finest_decoder: the full-resolution decoder scale. ``"narrow"`` (default): upsampled + gated
            skip fused in ``fuse_channels`` channels, activation, 1x1 head (``_NarrowOutputLevel``);
            full-resolution detail comes from the encoder's full-resolution convolution (through the
            gate) and the position-specific kernel = stride upsampler. ``"pointwise"``: the sum in
            ``channels[0]`` channels, a residual unit of one 1x1 convolution, the head. ``"conv"``:
            the same with a ``kernel_size`` convolution, the single most expensive layer of the
            network, for sharper boundaries. The finest scale keeps its activation: without it (the
            head folded into the upsampler) the segmentation is markedly worse.
        fuse_channels: width of the ``"narrow"`` full-resolution fusion.
        norm: MONAI norm name/tuple (``"instance"``, ``"batch"``, ``("group", {"num_groups": 8})``).
        act: MONAI activation name/tuple. Default LeakyReLU(0.01) (as nnU-Net): ``"PRELU"`` works too
            but its backward pass is slow on full-resolution layers.
        dropout: dropout probability inside the residual units.
        deep_supervision: in training mode also return logits from coarser decoder scales.
        deep_supervision_levels: how many coarser scales to supervise (default: all but the bottleneck).
        presence_head: add a lesion-presence logit per input from the pooled bottleneck.
        pad_input: pad inputs whose spatial sizes are not divisible by the total stride (zeros,
            at the high end) and crop the outputs back; when False such inputs raise ``ValueError``.

    Shapes:
        input ``(B, in_channels, *spatial)``; logits ``(B, out_channels, *spatial)``; deep level
        ``k`` (1-based) ``(B, out_channels, *ceil(spatial / prod(strides[:k])))``; presence ``(B, 1)``;
        attention map ``k`` (0 = finest) ``(B, 1, *ceil(spatial / prod(strides[:k])))``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int | Sequence[int]] = (2, 2, 2),
        num_res_units: int = 2,
        kernel_size: int = 3,
        finest_decoder: str = "narrow",
        fuse_channels: int = 8,
        norm: tuple | str = "instance",
        act: tuple | str = ("leakyrelu", {"negative_slope": 0.01}),
        dropout: float = 0.0,
        deep_supervision: bool = False,
        deep_supervision_levels: int | None = None,
        presence_head: bool = False,
        pad_input: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 scales, got {tuple(channels)}")
        if len(strides) != len(channels) - 1:
            raise ValueError(
                f"strides needs len(channels) - 1 = {len(channels) - 1} entries, got {len(strides)}"
            )
        if num_res_units < 1:
            raise ValueError(f"num_res_units must be >= 1, got {num_res_units}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = tuple(int(c) for c in channels)
        self.strides = [_as_tuple(s, spatial_dims) for s in strides]
        # factors[k]: total downsampling of scale k per dimension; the coarsest is the padding divisor.
        factors = [[1] * spatial_dims]
        for s in self.strides:
            factors.append([f * si for f, si in zip(factors[-1], s)])
        self.factors = factors
        self.divisor = factors[-1]
        self.pad_input = pad_input
        self.deep_supervision = deep_supervision
        self.presence_head = presence_head
        n_dec = len(channels) - 1
        if deep_supervision_levels is None:
            deep_supervision_levels = n_dec - 1
        if deep_supervision and not 1 <= deep_supervision_levels <= n_dec - 1:
            raise ValueError(
                f"deep_supervision_levels must be in [1, {n_dec - 1}] for {len(channels)} scales, "
                f"got {deep_supervision_levels}"
            )
        self.n_deep = deep_supervision_levels if deep_supervision else 0

        common = dict(kernel_size=kernel_size, act=act, norm=norm, dropout=dropout)
        # One convolution at full resolution: it is the costliest scale (8x the voxels of the next).
        # A plain convolution: a residual unit here would add a full-resolution 1x1 projection of the
        # input channels (C_in != channels[0]) for no benefit to a single layer.
        self.stem = Convolution(
            spatial_dims, in_channels, channels[0], kernel_size=kernel_size, act=act, norm=norm, dropout=dropout
        )
        encoder: list[nn.Module] = []
        for i in range(1, len(channels)):
            stride = self.strides[i - 1]
            # Downsample with a kernel == stride convolution (a 3x3 strided one plus MONAI's strided
            # 3x3 residual projection cost 7x more); its output also feeds the attention gate.
            down = Convolution(
                spatial_dims, channels[i - 1], channels[i], strides=stride, kernel_size=stride, padding=0,
                act=act, norm=norm, dropout=dropout,
            )
            res = (
                ResidualUnit(spatial_dims, channels[i], channels[i], strides=1, subunits=num_res_units - 1, **common)
                if num_res_units > 1
                else nn.Identity()
            )
            encoder.append(_EncoderLevel(down, res))
        self.encoder = nn.ModuleList(encoder)
        if finest_decoder not in ("narrow", "pointwise", "conv"):
            raise ValueError(f"finest_decoder must be 'narrow', 'pointwise' or 'conv', got {finest_decoder!r}")
        if finest_decoder == "narrow" and fuse_channels < 1:
            raise ValueError(f"fuse_channels must be >= 1, got {fuse_channels}")
        self.finest_decoder = finest_decoder
        levels: list[nn.Module] = []
        for i in range(n_dec):
            if i == 0 and finest_decoder == "narrow":
                levels.append(_NarrowOutputLevel(spatial_dims, channels[0], channels[1], self.strides[0], out_channels,
                                                 fuse_channels, act))
                continue
            k = 1 if i == 0 and finest_decoder == "pointwise" else kernel_size
            fuse = ResidualUnit(
                spatial_dims, channels[i], channels[i], strides=1, subunits=1, **dict(common, kernel_size=k)
            )
            levels.append(_DecoderLevel(spatial_dims, channels[i], channels[i + 1], self.strides[i], fuse))
        # decoder[j] produces scale n_dec - 1 - j: coarsest first, so iteration order is the data order.
        # With the "narrow" finest decoder the last level's output is already the logits.
        self.decoder = nn.ModuleList(levels[::-1])
        self.head = nn.Identity() if finest_decoder == "narrow" else Pointwise(channels[0], out_channels)
        # deep_heads[k - 1] reads decoder scale k (k = 1 is the second finest).
        self.deep_heads = nn.ModuleList([Pointwise(channels[k], out_channels) for k in range(1, self.n_deep + 1)])
        # Average and max pooling: a 1 mm lesion occupies a tiny fraction of the bottleneck, the max keeps it.
        self.presence = nn.Linear(2 * channels[-1], 1) if presence_head else None

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        pads: list[int] = []
        need = False
        # F.pad lists pads from the last dimension backwards.
        for d in range(self.spatial_dims - 1, -1, -1):
            extra = (-spatial[d]) % self.divisor[d]
            if extra != 0:
                need = True
            pads.append(0)
            pads.append(extra)
        if not need:
            return x
        if not self.pad_input:
            raise ValueError(
                f"AttentionResUNet needs every spatial size divisible by {self.divisor} "
                f"(the product of the strides), got {list(spatial)}"
            )
        return F.pad(x, pads)

    def _crop(self, y: torch.Tensor, spatial: list[int], factor: list[int]) -> torch.Tensor:
        # Ceil division keeps every voxel that overlaps the unpadded input.
        if self.spatial_dims == 2:
            return y[:, :, : (spatial[0] + factor[0] - 1) // factor[0], : (spatial[1] + factor[1] - 1) // factor[1]]
        return y[
            :,
            :,
            : (spatial[0] + factor[0] - 1) // factor[0],
            : (spatial[1] + factor[1] - 1) // factor[1],
            : (spatial[2] + factor[2] - 1) // factor[2],
        ]

    def _run(
        self, x: torch.Tensor, n_deep: int, with_presence: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None, list[torch.Tensor]]:
        """Shared forward: logits, deep logits (finer to coarser), presence logit, attention maps (finest first)."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"AttentionResUNet({self.spatial_dims}D) expects input (B, C, {'X, Y, Z' if self.spatial_dims == 3 else 'X, Y'}), "
                f"got shape {list(x.shape)}"
            )
        spatial = [int(s) for s in x.shape[2:]]
        h = self._pad(x)
        h = self.stem(h)
        skips: list[torch.Tensor] = [h]
        downs: list[torch.Tensor] = []  # downs[i]: skip i projected onto scale i + 1
        for level in self.encoder:
            d, h = level(h)
            downs.append(d)
            skips.append(h)

        presence: torch.Tensor | None = None
        if with_presence and self.presence is not None:
            pooled = torch.cat([h.flatten(2).mean(dim=2), h.flatten(2).amax(dim=2)], dim=1)
            presence = self.presence(pooled)

        n_dec = len(skips) - 1
        decoded: list[torch.Tensor] = []  # coarsest first
        alphas: list[torch.Tensor] = []
        j = 0
        for level in self.decoder:
            h, alpha = level(skips[n_dec - 1 - j], downs[n_dec - 1 - j], h)
            decoded.append(h)
            alphas.append(alpha)
            j += 1
        decoded.reverse()
        alphas.reverse()

        factors = self.factors
        logits = self._crop(self.head(decoded[0]), spatial, factors[0])
        deep: list[torch.Tensor] = []
        k = 1
        for dh in self.deep_heads:
            if k <= n_deep:
                deep.append(self._crop(dh(decoded[k]), spatial, factors[k]))
            k += 1
        maps = [self._crop(a, spatial, factors[i]) for i, a in enumerate(alphas)]
        return logits, deep, presence, maps

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits in eval mode; in training with deep supervision / presence head, the list described above.

        Args:
            x: ``(B, in_channels, *spatial)`` float tensor.
        """
        if not self.training or (self.n_deep == 0 and self.presence is None):
            logits, _, _, _ = self._run(x, 0, False)
            return logits
        logits, deep, presence, _ = self._run(x, self.n_deep, True)
        out = [logits] + deep
        if presence is not None:
            out.append(presence)
        return out

    @torch.jit.export
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Gate coefficients, finest skip first: ``(B, 1, *ceil(spatial / prod(strides[:k])))`` in [0, 1]."""
        _, _, _, maps = self._run(x, 0, False)
        return maps

    @torch.jit.ignore
    def forward_with_aux(self, x: torch.Tensor) -> dict:
        """Every output regardless of mode.

        Returns:
            dict with ``logits`` (B, out, *spatial), ``deep`` (list, finer to coarser; empty without
            deep supervision), ``presence`` ((B, 1) or None) and ``attention`` (list of alpha maps).
        """
        logits, deep, presence, maps = self._run(x, self.n_deep, True)
        return {"logits": logits, "deep": deep, "presence": presence, "attention": maps}
