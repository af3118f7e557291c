"""Token layers of vision transformers as patch grids.

A ViT block's output is (N, T, C): ``extra`` leading tokens (a class token, register tokens) and then
the ``h x w`` patch tokens in row-major order. For a layer method the patch tokens are the layer's
spatial map: (N, C, h, w), the extra tokens dropped. The grid is found from the token count and the
input's size alone: the fewest extra tokens (at most :data:`MAX_EXTRA`) that leave a grid of square
patches tiling the input (``H / h == W / w``, both whole numbers), at least 2x2, with more patch
tokens than extra ones.
"""

from __future__ import annotations

from torch import Tensor

MAX_EXTRA = 16  # a class token, a distillation token, register tokens (DINOv2 uses 4)


def token_grid(tokens: int, input_size: tuple[int, int]) -> tuple[int, int, int] | None:
    """(extra tokens, h, w) of a layer with ``tokens`` tokens for an input of ``input_size`` (H, W);
    None when no grid of square patches fits."""
    height, width = input_size
    for extra in range(min(MAX_EXTRA, tokens // 2) + 1):
        patches = tokens - extra
        for h in range(2, height + 1):
            if patches % h or height % h:
                continue
            w = patches // h
            if w >= 2 and width % w == 0 and height // h == width // w:
                return extra, h, w
    return None


def is_token_layer(shape: tuple[int, ...], input_size: tuple[int, int]) -> bool:
    """A (N, T, C) activation whose T tokens hold a patch grid of the input."""
    return len(shape) == 3 and shape[1] > 1 and token_grid(shape[1], input_size) is not None


def tokens_to_grid(tokens: Tensor, input_size: tuple[int, int]) -> Tensor:
    """(..., T, C) -> (..., C, h, w): the patch tokens as a map, the extra tokens dropped."""
    grid = token_grid(tokens.shape[-2], input_size)
    if grid is None:
        raise ValueError(
            f"a token layer of {tokens.shape[-2]} tokens holds no grid of square patches "
            f"for a {input_size[0]}x{input_size[1]} input"
        )
    extra, h, w = grid
    patches = tokens[..., extra:, :]
    return patches.reshape(*patches.shape[:-2], h, w, patches.shape[-1]).movedim(-1, -3)
