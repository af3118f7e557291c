"""A small Vision Transformer (Dosovitskiy et al., 2021) for 3x32x32 inputs, as timm writes one.

Patches of 4x4 pixels (an 8x8 grid of 64 tokens) embedded by a strided convolution, a class token,
learnt position embeddings, ``depth`` pre-norm blocks (multi-head self-attention, then a GELU MLP,
each with a residual), a final LayerNorm; the class token's features are classified. Attention runs
fused (``F.scaled_dot_product_attention``, what timm and torchvision call) or, with ``fused=False``,
as an explicit softmax of ``q k^T / sqrt(d)`` — the same numbers, and the same state dict.

``num_features``, ``output_features`` and ``classify_features`` are what an OoD head needs (as in
``models/lenet5.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, fused: bool = True) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attention = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
            out = attention @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, fused: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, fused)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        patch: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.num_features = dim
        self.output_features = False
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (image_size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, dim * mlp_ratio, fused) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        features = self.norm(x)[:, 0]
        return features if self.output_features else self.classify_features(features)

    def classify_features(self, features: Tensor) -> Tensor:
        """(N, dim) class-token features -> (N, num_classes) scores."""
        return self.head(features)
