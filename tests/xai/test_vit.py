"""Vision transformers: token layers as patch grids, and the attention methods, against plain references.

The references are written here from the papers and the model's weights, without the library's tape or
token code: Captum's LayerGradCam and LayerGradientXActivation on a hand-written reshape of the same
tokens; attention rollout (Abnar & Zuidema, 2020) and gradient-weighted attention (Chefer et al., 2021)
on a forward pass written out by hand with explicit attention. Tolerances: float32 rounding of the same
sums in another order, 1e-5 of the map's largest magnitude.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from captum.attr import LayerGradientXActivation as CaptumLGXA
from torch import Tensor, nn

from core.methods import call
from models.vit import ViT
from tests.nets import seeded
from workers.methods import Context, build_explainer, explain
from workers.xai import AttentionGradient, AttentionRollout, AttentionTape, GradCAM, token_grid

GRID = 8  # 32x32 inputs, 4x4 patches


def vit(fused: bool = True) -> nn.Module:
    return seeded(lambda: ViT(num_classes=10, dim=32, depth=3, heads=4, fused=fused))


def close(found: Tensor, wanted: Tensor) -> None:
    wanted = wanted.detach()
    torch.testing.assert_close(found, wanted, rtol=1e-5, atol=1e-5 * float(wanted.abs().max()))


@pytest.mark.parametrize(
    ("tokens", "size", "grid"),
    [
        (65, (32, 32), (1, 8, 8)),  # a class token
        (64, (32, 32), (0, 8, 8)),  # none (global pooling)
        (197, (224, 224), (1, 14, 14)),  # ViT-B/16
        (201, (224, 224), (5, 14, 14)),  # a class token and 4 registers (DINOv2)
        (129, (32, 64), (1, 8, 16)),  # a wide input
        (3, (32, 32), None),
        (65, (30, 32), None),  # no square patches tile 30x32 in an 8x8 grid
    ],
)
def test_the_patch_grid_is_found_from_the_token_count_and_the_input_size(tokens, size, grid):
    assert token_grid(tokens, size) == grid


class GridTap(nn.Module):
    """After a block: its patch tokens reshaped by hand to (N, C, 8, 8), through ``grid`` (what Captum is
    given as the layer), and back to tokens for the next block."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.grid = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.block(x)
        batch, _, channels = tokens.shape
        grid = self.grid(tokens[:, 1:].transpose(1, 2).reshape(batch, channels, GRID, GRID))
        return torch.cat([tokens[:, :1], grid.reshape(batch, channels, GRID * GRID).transpose(1, 2)], dim=1)


@pytest.fixture
def images() -> Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("block", [0, 2])
def test_gradcam_on_a_token_layer_is_captums_on_a_hand_written_reshape(images, block):
    network = vit()
    tapped = vit()
    tapped.blocks[block] = GridTap(tapped.blocks[block])
    targets = torch.tensor([1, 5, 7])
    with torch.no_grad():
        torch.testing.assert_close(tapped(images), network(images))
    wanted = LayerGradCam(tapped, tapped.blocks[block].grid).attribute(images, target=targets, relu_attributions=True)
    wanted = F.interpolate(wanted, size=(32, 32), mode="bilinear", align_corners=False)
    close(GradCAM(network, f"blocks.{block}")(images, targets), wanted)


def test_layer_gradient_x_activation_on_a_token_layer_is_captums_on_a_hand_written_reshape(images):
    """Through the service's path (``workers.methods.explain``): the token grid summed over channels."""
    network = vit()
    tapped = vit()
    tapped.blocks[1] = GridTap(tapped.blocks[1])
    targets = torch.tensor([[2], [3], [9]])
    wanted = CaptumLGXA(tapped, tapped.blocks[1].grid).attribute(images, target=targets[:, 0])
    wanted = F.interpolate(wanted.sum(dim=1, keepdim=True), size=(32, 32), mode="bilinear", align_corners=False)
    the_call = call("layer_gradient_x_activation", layer="blocks.1")
    found = explain(the_call, build_explainer(the_call, Context(network, "")), images, targets, lambda f: None)
    close(found, wanted)


def explicit_forward(network: ViT, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The ViT's forward written out, attention as softmax(q k^T / sqrt(d)): (scores, attention per block)."""
    tokens = network.patch_embed(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([network.cls_token.expand(len(x), -1, -1), tokens], dim=1) + network.pos_embed
    maps = []
    for block in network.blocks:
        attn = block.attn
        batch, count, dim = tokens.shape
        qkv = attn.qkv(block.norm1(tokens)).reshape(batch, count, 3, attn.heads, dim // attn.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-2, -1) / (dim // attn.heads) ** 0.5, dim=-1)
        if attention.requires_grad:
            attention.retain_grad()
        maps.append(attention)
        tokens = tokens + attn.proj((attention @ v).transpose(1, 2).reshape(batch, count, dim))
        tokens = tokens + block.mlp(block.norm2(tokens))
    return network.head(network.norm(tokens)[:, 0]), maps


def patch_row(relevance: Tensor) -> Tensor:
    """(N, T, T) -> (N, 1, 32, 32): the class token's row over the patches, upsampled."""
    row = relevance[:, 0, 1:].reshape(-1, 1, GRID, GRID)
    return F.interpolate(row, size=(32, 32), mode="bilinear", align_corners=False)


def reference_rollout(network: ViT, x: Tensor) -> Tensor:
    with torch.no_grad():
        _, maps = explicit_forward(network, x)
    rollout = torch.eye(65).expand(len(x), 65, 65)
    for attention in maps:
        mixed = 0.5 * attention.mean(dim=1) + 0.5 * torch.eye(65)
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    return patch_row(rollout)


def reference_chefer(network: ViT, x: Tensor, target: int) -> Tensor:
    scores, maps = explicit_forward(network, x.clone().requires_grad_(True))
    scores[:, target].sum().backward()
    relevance = torch.eye(65).expand(len(x), 65, 65)
    for attention in maps:
        weighted = (attention.grad * attention.detach()).clamp(min=0).mean(dim=1)
        relevance = relevance + weighted @ relevance
    return patch_row(relevance)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
def test_attention_rollout_is_the_papers_on_fused_and_explicit_attention(images, fused):
    network = vit(fused)
    found = AttentionRollout(network)(images, torch.tensor([[1, 2]] * 3))
    wanted = reference_rollout(vit(False), images)
    close(found[:, :1], wanted)
    assert torch.equal(found[:, 0], found[:, 1]), "rollout does not depend on the target"


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
def test_gradient_weighted_attention_is_the_papers_on_fused_and_explicit_attention(images, fused):
    network = vit(fused)
    found = AttentionGradient(network)(images, torch.tensor([[1, 6]] * 3))
    for column, target in enumerate((1, 6)):
        close(found[:, column : column + 1], reference_chefer(vit(False), images, target))
    assert not torch.allclose(found[:, 0], found[:, 1]), "it does depend on the target"


def test_fused_and_explicit_attention_give_equal_maps(images):
    """The same weights, attention computed by F.scaled_dot_product_attention or written out: equal within 1e-5."""
    for method in (AttentionRollout, AttentionGradient):
        close(method(vit(True))(images, 3), method(vit(False))(images, 3))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"is_causal": True},
        {"attn_mask": "bool"},
        {"attn_mask": "float"},
        {"scale": 0.3},
        {"enable_gqa": True},
    ],
)
def test_the_tape_computes_fused_attention_as_torch_does_and_keeps_its_matrix(options):
    generator = torch.Generator().manual_seed(5)
    q = torch.randn(2, 4, 9, 8, generator=generator)
    heads_kv = 2 if options.get("enable_gqa") else 4
    k, v = (torch.randn(2, heads_kv, 9, 8, generator=generator) for _ in range(2))
    if options.get("attn_mask") == "bool":
        options = {"attn_mask": (torch.rand(9, 9, generator=generator) > 0.3) | torch.eye(9, dtype=torch.bool)}
    elif options.get("attn_mask") == "float":
        options = {"attn_mask": torch.randn(9, 9, generator=generator)}
    wanted = F.scaled_dot_product_attention(q, k, v, **options)
    with AttentionTape() as tape:
        found = F.scaled_dot_product_attention(q, k, v, **options)
    torch.testing.assert_close(found, wanted, rtol=1e-5, atol=1e-6)
    (attention,) = tape.maps
    assert attention.shape == (2, 4, 9, 9)
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(2, 4, 9))


def test_a_softmax_that_is_not_attention_is_not_recorded():
    with AttentionTape() as tape:
        torch.randn(2, 10).softmax(dim=-1)  # class probabilities
        torch.randn(2, 3, 4, 5).softmax(dim=-1)  # not square
        torch.randn(2, 3, 4, 4).softmax(dim=1)  # not over the last dimension
    assert tape.maps == []
