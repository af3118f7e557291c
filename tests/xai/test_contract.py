"""Invariants every explainer keeps: shapes, dtypes, model state, hooks, determinism, batch invariance, errors.

Every method of the catalogue (``core.methods.METHODS``) is a case, built the way the worker builds it
(``workers.methods.build_explainer``) with the small parameters of ``SMALL_PARAMS``: a method added to the
catalogue is picked up by every test here, and fails until it is given small parameters. A few more cases
exercise what the registry path does not reach: chunked internal batches, two layers at once, and registry
calls with other parameters (GradCAM at the input, overlapping occlusion windows with a reference value).

Every explainer takes every target form (``_validation.normalise_targets``, shared by the gradient and the
perturbation explainers): an int, a 0-D tensor, a list or 1-D tensor of N ints, an (N, l) tensor.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from captum.attr import LayerGradCam
from torch import Tensor, nn

from core.methods import METHODS, MethodCallBase, call
from tests.nets import LeNet5, TinyViT, TwiceNet, seeded
from workers.methods import ADAPTERS, Context, build_explainer, explain
from workers.xai import (
    Explainer,
    GradCAM,
    Gradient,
    GuidedGradCAM,
    IntegratedGradients,
    LayerGradientXActivation,
    OoDNet,
    SmoothGrad,
)

SEED = 3  # the request's seed in every context here (stochastic methods are then deterministic)
LAYER = "conv2"  # the context's default layer: what lenet5-shapes' manifest names for GradCAM
LAYER_SHAPES = {"conv1": (6, 28, 28), "conv2": (16, 10, 10), "fc2": (84,)}  # LeNet5's, per image

# Small, to keep the file fast. For 4 images each method runs one batch (workers.methods.INTERNAL_BATCH for
# the path and noise methods, 256 masked images for the perturbation methods at 32 x 32): the *_chunked cases
# and the progress test split batches.
SMALL_PARAMS: dict[str, dict[str, Any]] = {
    "gradient": {},
    "deconvolution": {},
    "guided_backprop": {},
    "input_x_gradient": {},
    "integrated_gradients": {"steps": 5},
    "smoothgrad": {"samples": 4},
    "gradcam": {},
    "guided_gradcam": {},
    "layer_gradient_x_activation": {},
    "occlusion": {"window": (8, 8)},
    "rise": {"num_masks": 64},
    "rise_plus": {"num_masks": 64},
    "attention_rollout": {},
    "attention_gradient": {},
}
ATTENTION = {name for name, method in METHODS.items() if method.uses_attention}  # run on a small ViT


@dataclass(frozen=True)
class Case:
    """An explainer to check: a method of the registry (``method``, ``params``) or a direct construction."""

    method: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # on top of SMALL_PARAMS[method]
    construct: Callable[[Context], Explainer] | None = None
    layers: tuple[str, ...] = ()  # the layers whose shape the result has; () for (N, l, H, W) maps
    single: bool = True  # one result, not a list with one per layer

    def call(self) -> MethodCallBase:
        if self.method not in SMALL_PARAMS:
            pytest.fail(f"method {self.method!r} of core.methods.METHODS has no small parameters in SMALL_PARAMS")
        return call(self.method, **{**SMALL_PARAMS[self.method], **self.params})

    def build(self, context: Context) -> Explainer:
        return self.construct(context) if self.construct is not None else build_explainer(self.call(), context)


def registry(name: str, **params: Any) -> Case:
    layers = (params.get("layer") or LAYER,) if ADAPTERS[name].layer_shaped else ()
    return Case(name, params, layers=layers)


CASES: dict[str, Case] = {
    **{name: registry(name) for name in METHODS},
    "gradcam_input": registry("gradcam", layer=""),  # the input itself as the layer
    "occlusion_overlapping": registry("occlusion", strides=(4, 4), reference=0.5),
    "integrated_gradients_chunked": Case(
        construct=lambda c: IntegratedGradients(c.network, steps=5, internal_batch_size=6)  # chunks split images
    ),
    "smoothgrad_chunked": Case(construct=lambda c: SmoothGrad(c.network, samples=4, seed=SEED, internal_batch_size=5)),
    "layer_gradient_x_activation_two_layers": Case(
        construct=lambda c: LayerGradientXActivation(c.network, ["conv1", "fc2"]), layers=("conv1", "fc2"), single=False
    ),
}
PERTURBATION = [name for name, method in METHODS.items() if method.perturbation]


def context_for(network: nn.Module, seed: int | None = SEED) -> Context:
    """The model's context, with untrained OoD heads whose score ranks every test image above a blank one.

    (Heads that rank an image below the blank give it inlier scores of 1 everywhere: RISEPlus would be RISE.)
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        ood_net = OoDNet(network, 10)
    return Context(network, LAYER, seed=seed, ood_net=ood_net)


def results(case: Case, output: Any) -> list[Tensor]:
    """The explainer's output as a list of tensors: one, or one per layer."""
    if case.single:
        assert isinstance(output, Tensor)
        return [output]
    assert isinstance(output, list) and all(isinstance(result, Tensor) for result in output)
    return output


def expected_shapes(case: Case, n: int, per_image: int | None) -> list[tuple]:
    """For (N, 3, 32, 32) inputs; per_image: l for (N, l) targets, None for the forms with one target per image."""
    if not case.layers:
        return [(n, per_image or 1, 32, 32)]
    lead = (n,) if per_image is None else (n, per_image)
    return [(*lead, *LAYER_SHAPES[layer]) for layer in case.layers]


def hooks_of(network: nn.Module) -> int:
    return sum(
        len(getattr(module, attr))
        for module in network.modules()
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    )


def state_of(network: nn.Module) -> tuple:
    return (
        [module.training for module in network.modules()],
        [param.requires_grad for param in network.parameters()],
        {name: value.clone() for name, value in network.state_dict().items()},
    )


def assert_same_state(before: tuple, after: tuple) -> None:
    assert before[0] == after[0]
    assert before[1] == after[1]
    for name, value in before[2].items():
        assert torch.equal(value, after[2][name]), name


def assert_nothing_left_behind(network: nn.Module, hooks: int = 0) -> None:
    """No hooks, features mode off, and torch's global modes as a test runs."""
    assert hooks_of(network) == hooks
    assert getattr(network, "output_features", False) is False
    assert torch._C._len_torch_function_stack() == 0
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def factory_for(name: str) -> Callable[[], nn.Module]:
    """The network a case runs on: LeNet5, or a small ViT for the attention methods."""
    return TinyViT if CASES[name].method in ATTENTION else LeNet5


@pytest.fixture
def network(request: pytest.FixtureRequest) -> nn.Module:
    """The network of the test's case (its ``name`` parameter)."""
    return seeded(factory_for(request.node.callspec.params["name"]))


def first_linear(network: nn.Module) -> nn.Module:
    return next(module for module in network.modules() if isinstance(module, nn.Linear))


@pytest.fixture
def odd_state_network(network) -> nn.Module:
    """Training mode in part, some parameters frozen: the state a caller may well leave it in."""
    network.train()
    next(module for module in network.modules() if isinstance(module, nn.Conv2d)).eval()
    first_linear(network).weight.requires_grad_(False)
    return network


def test_every_method_of_the_catalogue_has_a_case():
    assert SMALL_PARAMS.keys() == METHODS.keys(), "give each method of core.methods.METHODS small parameters here"
    assert set(METHODS) <= set(CASES)
    for name in METHODS:
        assert CASES[name].call().name == name


TARGET_FORMS = [
    pytest.param(3, None, id="int"),
    pytest.param(torch.tensor(3), None, id="0-D"),
    pytest.param([0, 1, 2, 3], None, id="list"),
    pytest.param(torch.tensor([0, 1, 2, 3]), None, id="1-D"),
    pytest.param(torch.tensor([[0, 5]] * 4), 2, id="N-by-l"),
]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(("targets", "per_image"), TARGET_FORMS)
def test_shapes_for_every_target_form(network, images, name, targets, per_image):
    case = CASES[name]
    maps = results(case, case.build(context_for(network))(images, targets))
    assert [tuple(m.shape) for m in maps] == expected_shapes(case, 4, per_image)
    for m in maps:
        assert m.dtype == images.dtype
        assert bool(torch.isfinite(m).all())
        assert not m.requires_grad and not m.is_inference(), "a normal tensor, usable outside inference mode"


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", CASES)
def test_the_maps_have_the_inputs_dtype(images, name, dtype):
    network = seeded(factory_for(name)).to(dtype)
    case = CASES[name]
    maps = results(case, case.build(context_for(network))(images.to(dtype), torch.tensor([[1, 7]] * 4)))
    assert [tuple(m.shape) for m in maps] == expected_shapes(case, 4, 2)
    for m in maps:
        assert m.dtype == dtype
        assert bool(torch.isfinite(m).all())


@pytest.mark.parametrize("name", METHODS)
def test_explain_gives_maps_at_the_input_size_and_progress_for_perturbation_methods(network, images, name):
    """The worker's path: (N, l, H, W) maps for (N, l) targets, whatever the method's own output."""
    seen: list[float] = []
    case = CASES[name]
    explainer = case.build(context_for(network))
    maps = explain(case.call(), explainer, images, torch.tensor([[0, 5]] * 4), seen.append)
    assert maps.shape == (4, 2, 32, 32) and maps.dtype == images.dtype
    assert bool(torch.isfinite(maps).all())
    if METHODS[name].perturbation:
        assert seen and seen == sorted(seen) and seen[-1] == 1.0
    else:
        assert seen == [], "only the perturbation methods report progress"


@pytest.mark.parametrize("name", CASES)
def test_the_model_is_given_back_as_found(odd_state_network, images, name):
    context = context_for(odd_state_network)
    context.ood_net.set_train(True)
    before, before_heads, hooks = state_of(odd_state_network), state_of(context.ood_net), hooks_of(odd_state_network)
    explainer = CASES[name].build(context)
    explainer(images, 2)
    assert explainer.network is odd_state_network, "the caller's model must not be copied"
    assert getattr(explainer, "ood_net", context.ood_net) is context.ood_net
    assert_same_state(before, state_of(odd_state_network))
    assert_same_state(before_heads, state_of(context.ood_net))
    assert_nothing_left_behind(odd_state_network, hooks)


@pytest.mark.parametrize("name", CASES)
def test_the_model_is_given_back_as_found_after_an_error(odd_state_network, images, name):
    context = context_for(odd_state_network)
    before, before_heads = state_of(odd_state_network), state_of(context.ood_net)
    explainer = CASES[name].build(context)
    expected = results(CASES[name], explainer(images, 1))
    with pytest.raises(ValueError, match="targets must be < 10"):
        explainer(images, 10)

    def explode(module, args):
        raise RuntimeError("boom")

    handle = first_linear(odd_state_network).register_forward_pre_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        explainer(images, 1)
    handle.remove()
    assert_same_state(before, state_of(odd_state_network))
    assert_same_state(before_heads, state_of(context.ood_net))
    assert_nothing_left_behind(odd_state_network)
    # The same explainer, inputs and process: bit-equal to its map before the errors.
    for found, wanted in zip(results(CASES[name], explainer(images, 1)), expected, strict=True):
        assert torch.equal(found, wanted)


@pytest.mark.parametrize("name", PERTURBATION)
def test_raising_from_progress_cancels_and_the_model_is_given_back(odd_state_network, images, name):
    context = context_for(odd_state_network)
    before, before_heads = state_of(odd_state_network), state_of(context.ood_net)
    explainer = CASES[name].build(context)
    explainer.perturbation_per_eval = 16  # several batches, so the cancel comes in the middle of the run
    seen = []

    class Cancelled(Exception):
        pass

    def cancel(fraction: float) -> None:
        seen.append(fraction)
        if fraction > 0.3:
            raise Cancelled

    with pytest.raises(Cancelled):
        explain(CASES[name].call(), explainer, images, torch.tensor([[0, 5]] * 4), cancel)
    assert 0.3 < seen[-1] < 1
    assert_same_state(before, state_of(odd_state_network))
    assert_same_state(before_heads, state_of(context.ood_net))
    assert_nothing_left_behind(odd_state_network)


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_map_and_only_stochastic_methods_read_the_seed(network, images, name):
    targets = torch.tensor([[3, 1], [4, 1], [5, 9], [2, 6]])
    context = context_for(network, seed=7)
    first = CASES[name].build(context)(images, targets)
    # Same seed, same process: the same computation, bit for bit.
    assert torch.equal(first, CASES[name].build(context)(images, targets))
    other = CASES[name].build(context_for(network, seed=8))(images, targets)
    if METHODS[name].stochastic:
        assert not torch.allclose(first, other)
    else:
        # The seed is no input of a deterministic method: still the same computation, bit for bit.
        assert torch.equal(first, other)


def test_the_rise_plus_case_weighs_by_inlier_scores(lenet, images):
    """Else the invariants above would check RISEPlus's weighting on inlier scores of 1 only."""
    context = context_for(lenet)
    plus = CASES["rise_plus"].build(context)(images, 1)
    rise = build_explainer(call("rise", **SMALL_PARAMS["rise_plus"]), context)(images, 1)
    assert float((plus - rise).norm() / rise.norm()) > 0.05


@pytest.mark.parametrize("name", CASES)
def test_an_image_gets_the_same_map_alone_and_in_a_batch(network, images, name):
    """Float rounding aside, batching changes nothing.

    Measured, as a fraction of the map's largest magnitude: the gradient methods at most 3e-7 (a batch
    of one takes other convolution kernels); Occlusion 3e-6 (a difference of two probabilities near 1,
    whose rounding the batch size changes); RISE and RISEPlus 2e-7. Hence rtol 1e-5 and an atol of 1e-5
    of the largest magnitude.
    """
    case = CASES[name]
    explainer = case.build(context_for(network))
    targets = torch.tensor([3, 1, 4, 1])
    batch = results(case, explainer(images, targets))
    for i in range(len(images)):
        alone = results(case, explainer(images[i : i + 1], targets[i : i + 1]))
        for one, many in zip(alone, batch, strict=True):
            torch.testing.assert_close(one, many[i : i + 1], rtol=1e-5, atol=1e-5 * float(many.abs().max()))


@pytest.mark.parametrize("name", CASES)
def test_channels_last_inputs_give_the_same_maps(network, images, name):
    """What the photo command passes. Other convolution kernels, other rounding: measured at most 3e-7 of
    the map's largest magnitude; rtol 1e-5 and an atol of 1e-5 of the largest magnitude."""
    case = CASES[name]
    explainer = case.build(context_for(network))
    expected = results(case, explainer(images, 1))
    found = results(case, explainer(images.contiguous(memory_format=torch.channels_last), 1))
    for one, other in zip(found, expected, strict=True):
        torch.testing.assert_close(one, other, rtol=1e-5, atol=1e-5 * float(other.abs().max()))


@pytest.mark.parametrize("name", CASES)
def test_the_inputs_are_not_touched(network, images, name):
    case = CASES[name]
    explainer = case.build(context_for(network))
    original = images.clone()
    expected = results(case, explainer(images, 1))
    assert torch.equal(images, original)
    assert not images.requires_grad
    leaf = images.clone().requires_grad_(True)  # a caller's tensor that is itself part of a graph
    found = results(case, explainer(leaf, 1))
    assert leaf.grad is None and torch.equal(leaf.detach(), original)
    for one, other in zip(found, expected, strict=True):
        assert not one.requires_grad
        assert torch.equal(one, other), "the same computation in the same process, bit for bit"


def test_memory_does_not_grow_over_many_calls(images):
    explainers = [case.build(context_for(seeded(factory_for(name)))) for name, case in CASES.items()]

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for obj in gc.get_objects() if type(obj) is torch.Tensor or type(obj) is nn.Parameter)

    for explainer in explainers:
        explainer(images, 1)
    baseline = live_tensors()
    for _ in range(5):  # a tensor kept per call would show after the first round already
        for explainer in explainers:
            explainer(images, 1)
    assert live_tensors() == baseline


# ---- errors: TypeError for a wrong type, ValueError for a wrong value, naming the argument ----


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(
    ("inputs", "error", "message"),
    [
        ([[1.0]], TypeError, "inputs must be a torch.Tensor"),
        (torch.zeros(3, 32, 32), ValueError, "inputs must be a 4-D tensor"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.long), TypeError, "inputs must be a floating-point"),
        (torch.zeros(0, 3, 32, 32), ValueError, "inputs must not be empty"),
    ],
)
def test_bad_inputs(network, name, inputs, error, message):
    with pytest.raises(error, match=message):
        CASES[name].build(context_for(network))(inputs, 1)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(
    ("targets", "error", "message"),
    [
        (1.5, TypeError, "targets must be an int"),
        (True, TypeError, "got bool"),
        ("cat", TypeError, "targets must be an int"),
        (torch.tensor([1.0, 2.0, 3.0, 4.0]), TypeError, "integer tensor"),
        (torch.tensor([1, 2]), ValueError, "length 4"),
        ([1, 2, 3], ValueError, "length 4"),
        ([1, 2, 3, "x"], TypeError, "only ints"),
        (torch.zeros(4, 1, 1, dtype=torch.long), ValueError, "0-D, 1-D or 2-D"),
        (torch.zeros(3, 2, dtype=torch.long), ValueError, r"shape \(N=4"),
        (-1, ValueError, "non-negative"),
        (10, ValueError, r"targets must be < 10"),
    ],
)
def test_bad_targets(network, images, name, targets, error, message):
    with pytest.raises(error, match=message):
        CASES[name].build(context_for(network))(images, targets)


@pytest.mark.parametrize(
    ("method", "params", "error", "message"),
    [
        ("rise_plus", {}, ValueError, "needs the model's OoD head"),
        ("gradcam", {"layer": "conv9"}, ValueError, "layer 'conv9' is not a module"),
        ("guided_gradcam", {"layer": "fc1"}, ValueError, "4-D"),
        ("layer_gradient_x_activation", {"layer": "x.y"}, ValueError, "layer 'x.y'"),
        ("occlusion", {"window": (40, 8)}, ValueError, "larger than the image"),
        ("attention_rollout", {}, ValueError, "computes no attention"),
        ("attention_gradient", {}, ValueError, "computes no attention"),
        ("occlusion", {"window": (4, 4), "strides": (8, 8)}, ValueError, "must not exceed the window"),
    ],
)
def test_a_call_that_does_not_fit_the_model_is_a_type_or_value_error(lenet, images, method, params, error, message):
    """What the worker turns into ``invalid_parameter``: raised while building or while explaining."""
    context = Context(lenet, LAYER, seed=SEED)  # no OoD head
    valid = call(method, **{**SMALL_PARAMS[method], **params})  # the catalogue accepts it; the model does not
    with pytest.raises(error, match=message):
        explain(valid, build_explainer(valid, context), images, torch.tensor([[1]] * 4), lambda fraction: None)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda net: Gradient("net"), TypeError, "network must be a torch.nn.Module"),
        (lambda net: GradCAM(net, "conv9"), ValueError, "layer 'conv9' is not a module"),
        (lambda net: GradCAM(net, 3), TypeError, "layer must be a dotted module name"),
        (lambda net: GradCAM(net, nn.Conv2d(1, 1, 1)), ValueError, "layer must be a submodule"),
        (lambda net: GuidedGradCAM(net, "nope"), ValueError, "layer 'nope'"),
        (lambda net: LayerGradientXActivation(net, []), ValueError, "at least one layer"),
        (lambda net: LayerGradientXActivation(net, ["conv1", "x.y"]), ValueError, "layer 'x.y'"),
        (
            lambda net: LayerGradientXActivation(net, "conv1", multiply_by_inputs=1),
            TypeError,
            "multiply_by_inputs must be a bool",
        ),
        (
            lambda net: LayerGradientXActivation(net, "conv1", attribute_to_layer_input="no"),
            TypeError,
            "attribute_to_layer_input",
        ),
        (lambda net: IntegratedGradients(net, steps=0), ValueError, "steps must be >= 1"),
        (lambda net: IntegratedGradients(net, steps=1, method="riemann_left"), ValueError, "steps must be >= 2"),
        (lambda net: IntegratedGradients(net, steps=2.5), TypeError, "steps must be an int"),
        (lambda net: IntegratedGradients(net, method="simpson"), ValueError, "method must be one of"),
        (lambda net: IntegratedGradients(net, baseline="black"), TypeError, "baseline must be a number or a tensor"),
        (lambda net: IntegratedGradients(net, baseline=float("nan")), ValueError, "baseline must be finite"),
        (lambda net: IntegratedGradients(net, internal_batch_size=0), ValueError, "internal_batch_size must be >= 1"),
        (lambda net: SmoothGrad(net, samples=0), ValueError, "samples must be >= 1"),
        (lambda net: SmoothGrad(net, noise_level=-0.1), ValueError, "noise_level must be within"),
        (lambda net: SmoothGrad(net, noise_level="high"), TypeError, "noise_level must be a number"),
        (lambda net: SmoothGrad(net, seed=-1), ValueError, "seed must be >= 0"),
    ],
)
def test_bad_constructor_arguments(lenet, make, error, message):
    with pytest.raises(error, match=message):
        make(lenet)


def test_a_baseline_that_does_not_broadcast_is_refused(lenet, images):
    with pytest.raises(ValueError, match="baseline of shape"):
        IntegratedGradients(lenet, baseline=torch.zeros(2, 5, 5))(images, 1)


def test_a_tensor_baseline_is_used_per_pixel(lenet, images):
    baseline = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    tensor_maps = IntegratedGradients(lenet, baseline=baseline, steps=8)(images, 1)
    assert not torch.allclose(tensor_maps, IntegratedGradients(lenet, steps=8)(images, 1))


def test_gradcam_needs_a_spatial_layer(lenet, images):
    with pytest.raises(ValueError, match="4-D"):
        GradCAM(lenet, "fc1")(images, 1)


def test_a_network_that_does_not_return_scores_is_refused(images):
    with pytest.raises(ValueError, match=r"\(N, num_classes\)"):
        Gradient(nn.Conv2d(3, 2, 3))(images, 0)


@pytest.mark.parametrize(
    "make",
    [
        lambda net: GradCAM(net, "conv"),
        lambda net: GuidedGradCAM(net, "conv"),
        lambda net: LayerGradientXActivation(net, "conv"),
    ],
)
def test_a_layer_that_runs_twice_is_refused(images, make):
    with pytest.raises(ValueError, match="ran 2 times in one forward pass"):
        make(seeded(TwiceNet))(images, 0)


def test_captum_silently_uses_the_last_call_of_a_layer_that_runs_twice(images):
    """What the refusal above protects against: Captum answers, for the second call only."""
    network = seeded(TwiceNet)
    attribution = LayerGradCam(network, network.conv).attribute(images, target=0)
    assert attribution.shape == (4, 1, 32, 32)


def test_a_layer_given_as_a_module_is_the_same_as_by_name(lenet, images):
    torch.testing.assert_close(GradCAM(lenet, lenet.conv2)(images, 1), GradCAM(lenet, "conv2")(images, 1))


def test_a_layer_off_the_output_path_has_zero_attribution(images):
    network = seeded(LeNet5)
    network.unused = nn.Conv2d(3, 3, 1)
    original_forward = network.forward
    network.forward = lambda x: (network.unused(x), original_forward(x))[1]
    attribution = LayerGradientXActivation(network, "unused")(images, 1)
    assert attribution.shape == (4, 3, 32, 32)
    assert not bool(attribution.any())
