"""First-party ConvNeXt CLIP trunk of OMG-LLaVA (open_clip ``convnext_large_d_320``, spec §2).

Written here because timm and open_clip need torchvision, which cannot be installed next to the CPU
build of torch 2.13 used by this project. The parameter names are the OMG-LLaVA module names
(``OpenCLIPBackbone_omgseg``: ``stem``, ``layer1..layer4``, ``norm_pre``, ``head``), so the 345
tensors of ``visual_encoder.backbone.*`` load without renaming; :func:`load_open_clip_weights` reads
the released open_clip file (``visual.trunk.*`` / ``visual.head.*``) through a declarative renaming
table.
"""
from __future__ import annotations

import contextlib
import os
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omg_llava.checkpoint import (LoadReport, RenameRule, load_into, read_weights, rename_keys,
                                  unwrap_state_dict)
from omg_llava.registry import MODELS

__all__ = ['ConvNeXtCLIPBackbone', 'LayerNorm2d', 'ConvNeXtBlock', 'OPEN_CLIP_RENAMES',
           'load_open_clip_weights']


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of an NCHW map: (B, C, H, W) → (B, C, H, W); params
    ``weight``/``bias``."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` on the last dim: (..., in_dim) → (..., out_dim); exact (erf) GELU."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int,
                 bias: tuple[bool, bool] = (True, True)) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim, bias=bias[0])
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim, bias=bias[1])

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block (timm, ``conv_mlp=False``): (B, d, H, W) → (B, d, H, W).

    ``x + gamma · fc2(GELU(fc1(LN(dwconv(x)))))`` with the LayerNorm and MLP applied in NHWC.
    Drop-path is the identity (the trunk is used for inference only).
    """

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: int = 4,
                 layer_norm_eps: float = 1e-6, ls_init_value: float = 1e-6) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim,
                                 bias=True)
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = Mlp(dim, mlp_ratio * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim, ), ls_init_value))

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)  # NHWC
        y = self.mlp(self.norm(y)).permute(0, 3, 1, 2)
        return x + y * self.gamma.reshape(1, -1, 1, 1)


class ConvNeXtStage(nn.Module):
    """``downsample`` (Identity, or LayerNorm2d + 2×2/2 conv) then ``blocks``: (B, C_in, H, W) → (B,
    C, H', W')."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, kernel_size: int = 7,
                 mlp_ratio: int = 4, layer_norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.downsample: nn.Module = nn.Identity()
        if downsample:
            self.downsample = nn.Sequential(LayerNorm2d(in_dim, eps=layer_norm_eps),
                                            nn.Conv2d(in_dim, dim, 2, stride=2, bias=True))
        self.blocks = nn.Sequential(
            *[ConvNeXtBlock(dim, kernel_size, mlp_ratio, layer_norm_eps) for _ in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class TrunkHead(nn.Module):
    """timm ConvNeXt head without classifier: average pool → LayerNorm2d → flatten: (B, C, H, W) →
    (B, C)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.mean(dim=(2, 3), keepdim=True)).flatten(1)


class ClipProjectionHead(nn.Module):
    """open_clip ``timm_proj='mlp'`` head: (B, C) → (B, clip_embed_dim); fc1 with bias, fc2
    without."""

    def __init__(self, in_dim: int, hidden_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.mlp = Mlp(in_dim, hidden_dim, embed_dim, bias=(True, False))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


@MODELS.register_module()
class ConvNeXtCLIPBackbone(nn.Module):
    """ConvNeXt trunk of the open_clip ``convnext_large_d_320`` model with OMG-LLaVA parameter
    names.

    Construction never loads weights (use :func:`load_open_clip_weights` or
    :func:`omg_llava.checkpoint.load_into`) and works under ``with torch.device('meta'):``.

    Args:
        depths: blocks per stage.
        dims: channels per stage.
        clip_embed_dim: CLIP embedding width (output of ``head.1``).
        clip_hidden_dim: hidden width of the CLIP projection MLP; default ``2 * clip_embed_dim`` as
            in open_clip (1536 = ``dims[-1]`` for convnext_large_d_320, 64 for the tiny fixture).
        kernel_size: depthwise conv kernel size.
        mlp_ratio: block MLP expansion.
        layer_norm_eps: epsilon of every LayerNorm.
        frozen: ``fix=True`` of the reference: no gradients, always in eval mode, forward under
            ``no_grad``.
    """

    def __init__(self, depths: Sequence[int] = (3, 3, 27, 3),
                 dims: Sequence[int] = (192, 384, 768, 1536),
                 clip_embed_dim: int = 768, clip_hidden_dim: int | None = None,
                 kernel_size: int = 7,
                 mlp_ratio: int = 4, layer_norm_eps: float = 1e-6, frozen: bool = True) -> None:
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f'expected 4 stages, got depths={tuple(depths)} dims={tuple(dims)}')
        self.dims = tuple(int(d) for d in dims)
        self.frozen = frozen
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4, bias=True),
                                  LayerNorm2d(dims[0], eps=layer_norm_eps))
        for i in range(4):
            stage = ConvNeXtStage(dims[max(i - 1, 0)], dims[i], depths[i], downsample=i > 0,
                                  kernel_size=kernel_size, mlp_ratio=mlp_ratio,
                                  layer_norm_eps=layer_norm_eps)
            self.add_module(f'layer{i + 1}', stage)
        self.norm_pre = nn.Identity()
        hidden = 2 * clip_embed_dim if clip_hidden_dim is None else clip_hidden_dim
        self.head = nn.Sequential(TrunkHead(dims[-1], eps=layer_norm_eps),
                                  ClipProjectionHead(dims[-1], hidden, clip_embed_dim))
        if frozen:
            self.requires_grad_(False)
            self.train(False)

    def train(self, mode: bool = True) -> ConvNeXtCLIPBackbone:
        """Set train/eval mode; a frozen trunk always stays in eval mode."""
        return super().train(False if self.frozen else mode)

    def _grad_context(self) -> contextlib.AbstractContextManager:
        return torch.no_grad() if self.frozen else contextlib.nullcontext()

    def forward(self, x: Tensor) -> list[Tensor]:
        """Run the trunk.

        Args:
            x: (B, 3, H, W) normalised images, H and W multiples of 32.

        Returns:
            4 NCHW maps (B, dims[i], H/s_i, W/s_i) with strides s = 4, 8, 16, 32.
        """
        with self._grad_context():
            x = self.stem(x)
            outs = []
            for i in range(4):
                x = getattr(self, f'layer{i + 1}')(x)
                outs.append(x)
            return outs

    def embed_image(self, x: Tensor) -> Tensor:
        """CLIP image embedding (unnormalised): (B, 3, H, W) → (B, clip_embed_dim)."""
        with self._grad_context():
            feat = self.norm_pre(self.forward(x)[-1])
            return self.head[1](self.head[0](feat))


# open_clip prefix ↔ backbone prefix, one row per module (the single source of both renaming
# directions).
OPEN_CLIP_PREFIXES: tuple[tuple[str, str], ...] = (
    ('visual.trunk.stem.', 'stem.'),
    ('visual.trunk.stages.0.', 'layer1.'),
    ('visual.trunk.stages.1.', 'layer2.'),
    ('visual.trunk.stages.2.', 'layer3.'),
    ('visual.trunk.stages.3.', 'layer4.'),
    ('visual.trunk.head.', 'head.0.'),
    ('visual.head.', 'head.1.'),
)
# open_clip names → backbone names (first match wins; anchored at the start of the key).
OPEN_CLIP_RENAMES: tuple[RenameRule, ...] = tuple(RenameRule(re.escape(a), b)
                                                  for a, b in OPEN_CLIP_PREFIXES)
# The CLIP text tower, present in the open_clip file but not part of the image trunk.
OPEN_CLIP_TEXT_TOWER: tuple[str, ...] = (r'transformer\.', r'token_embedding\.',
                                         r'positional_embedding$',
                                         r'ln_final\.', r'text_projection$', r'logit_scale$',
                                         r'attn_mask$')
OMG_LLAVA_PREFIX = 'visual_encoder.backbone.'


def load_open_clip_weights(backbone: ConvNeXtCLIPBackbone, path: str | os.PathLike, *,
                           weights_only: bool = True) -> LoadReport:
    """Load the trunk from a weight file, strictly (every backbone tensor, exact shapes).

    Accepted layouts, detected by key prefix: the open_clip file (``visual.trunk.*``,
    ``visual.head.*``; the text tower is ignored), a file with the backbone's own names (``stem.*``,
    ``layer1.*`` ...), or an OMG-LLaVA export with ``visual_encoder.backbone.*`` (other
    ``visual_encoder``/model keys ignored).

    Args:
        backbone: the target, built on a real device.
        path: ``.bin`` / ``.pth`` / ``.safetensors`` file.
        weights_only: use torch's restricted unpickler (default; the file is untrusted input).

    Returns:
        The load report; ``ignored`` lists the skipped keys.

    Raises:
        CheckpointError: unreadable, truncated or corrupt file.
        CheckpointMismatchError: missing, unexpected or mis-shaped keys.
    """
    source = os.fspath(path)
    state_dict = unwrap_state_dict(read_weights(source, weights_only=weights_only), source=source)
    keys = list(state_dict)
    rules: tuple[RenameRule, ...] = ()
    ignore: tuple[str, ...] = ()
    if any(k.startswith('visual.') for k in keys):
        rules, ignore = OPEN_CLIP_RENAMES, OPEN_CLIP_TEXT_TOWER
    elif any(k.startswith(OMG_LLAVA_PREFIX) for k in keys):
        rules = (RenameRule(OMG_LLAVA_PREFIX.replace('.', r'\.'), ''), )
        ignore = ('(?!' + OMG_LLAVA_PREFIX.replace('.', r'\.') + ')', )
    # otherwise: the backbone's own names, or an unknown layout that load_into reports key by key
    renamed, ignored = rename_keys(state_dict, rules, ignore=ignore)
    report = load_into(backbone, renamed, source=source)
    report.ignored = ignored
    return report
