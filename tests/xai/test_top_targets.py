"""TopTargets: the k best classes of the network's own output, from the method's own forward pass where it
has one over the inputs, and the same maps as those classes given explicitly."""

from __future__ import annotations

import pytest
import torch

from core.methods import METHODS, call
from tests.nets import TinyViT, seeded
from tests.xai.test_contract import hooks_of
from workers.methods import Context, build_explainer
from workers.xai import TopTargets

SMALL = {
    "integrated_gradients": {"steps": 5},
    "smoothgrad": {"samples": 4},
    "occlusion": {"window": (8, 8)},
    "rise": {"num_masks": 64},
    "rise_plus": {"num_masks": 64},
}


@pytest.fixture
def context(registry) -> Context:
    network = registry.network("lenet5-shapes")
    from workers.model_host import ModelHost

    return Context(network, "conv2", seed=3, ood_net=ModelHost(registry).ood_net("lenet5-shapes"))


@pytest.mark.parametrize("name", list(METHODS))
def test_top_targets_give_the_maps_of_the_top_classes_and_the_network_output(name, context, images):
    if METHODS[name].uses_attention:
        context = Context(seeded(TinyViT), "", seed=3)
    explainer = build_explainer(call(name, **SMALL.get(name, {})), context)
    with torch.no_grad():
        logits = context.network(images)
    explicit = explainer(images, logits.topk(2, dim=1).indices)
    deferred = explainer(images, TopTargets(2))
    # Same process, same computation: equal up to float32 rounding of a different graph order (1e-5).
    torch.testing.assert_close(deferred, explicit, rtol=1e-5, atol=1e-5 * float(explicit.abs().max()))
    torch.testing.assert_close(explainer.last_outputs, logits, rtol=1e-5, atol=1e-5)
    assert hooks_of(context.network) == 0


def test_methods_with_a_forward_over_the_inputs_run_one_pass(context, images):
    calls = []
    handle = context.network.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        build_explainer(call("gradcam"), context)(images, TopTargets(3))
        assert len(calls) == 1, "one forward gives the targets and the map"
        calls.clear()
        build_explainer(call("integrated_gradients", steps=5), context)(images, TopTargets(3))
        assert len(calls) >= 2, "a forward over the inputs first, then the path"
    finally:
        handle.remove()


def test_bad_top_targets(context, images):
    with pytest.raises(ValueError, match=r"TopTargets\.k must be"):
        build_explainer(call("gradient"), context)(images, TopTargets(11))
    with pytest.raises(ValueError, match=r"TopTargets\.k must be >= 1"):
        TopTargets(0)
    assert hooks_of(context.network) == 0
