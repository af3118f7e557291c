"""Find a layer by name and catch what flows through it during one forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


def resolve_layer(network: nn.Module, layer: object, name: str = "layer") -> tuple[str, nn.Module]:
    """Return ``(dotted name, module)`` for a layer given by its dotted name or as a submodule."""
    if isinstance(layer, nn.Module):
        for found_name, module in network.named_modules():
            if module is layer:
                return found_name, module
        raise ValueError(f"{name} must be a submodule of the network; the module given is not one")
    if not isinstance(layer, str):
        raise TypeError(f"{name} must be a dotted module name (str) or a submodule, got {type(layer).__name__}")
    try:
        return layer, network.get_submodule(layer)
    except AttributeError:
        known = [n for n, _ in network.named_modules() if n][:8]
        raise ValueError(f"{name} {layer!r} is not a module of the network (dotted names such as {known})") from None


class LayerCapture:
    """Activations of one module during one forward pass (its input or its output).

    A module that runs more than once in the pass makes "the layer's activation" ambiguous;
    :meth:`activation` then raises instead of silently picking one of the calls.
    """

    def __init__(self, name: str, module: nn.Module, *, capture_input: bool = False) -> None:
        self.name = name
        self.module = module
        self.capture_input = capture_input
        self.tensors: list[Tensor] = []

    def _catch(self, value: Any) -> Tensor | None:
        """Record the activation; return a replacement for the network to use, or None.

        When nothing upstream requires grad (frozen parameters, an input without grad), the
        activation becomes a leaf that does: autograd then records only the part of the network
        above the layer, and the forward pass below it runs as cheaply as inference. The network
        gets a clone, so its own in-place operations on the activation stay legal.
        """
        if isinstance(value, tuple):
            value = value[0] if len(value) == 1 else value
        if not isinstance(value, Tensor):
            side = "input" if self.capture_input else "output"
            raise TypeError(f"layer {self.name!r} must have a single tensor as {side}, got {type(value).__name__}")
        if value.requires_grad or not torch.is_grad_enabled() or not value.is_floating_point():
            self.tensors.append(value)
            return None
        root = value.detach().requires_grad_(True)
        self.tensors.append(root)
        return root.clone()

    def _forward_pre_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        replacement = self._catch(args)
        return None if replacement is None else (replacement, *args[1:])

    def _forward_hook(self, module: nn.Module, args: tuple, output: Any) -> Tensor | None:
        return self._catch(output)

    def activation(self) -> Tensor:
        if len(self.tensors) != 1:
            raise ValueError(
                f"layer {self.name!r} ran {len(self.tensors)} times in one forward pass; "
                "a layer method needs a module that runs exactly once (choose its parent or a module used once)"
            )
        return self.tensors[0]


@contextmanager
def capturing(captures: list[LayerCapture]) -> Iterator[list[LayerCapture]]:
    """Hook every capture's module for the block; the hooks are removed in ``finally``."""
    handles = []
    try:
        for capture in captures:
            if capture.capture_input:
                handles.append(capture.module.register_forward_pre_hook(capture._forward_pre_hook))
            else:
                handles.append(capture.module.register_forward_hook(capture._forward_hook))
        yield captures
    finally:
        for handle in handles:
            handle.remove()
