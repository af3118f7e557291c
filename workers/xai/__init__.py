"""Saliency explainers for PyTorch image classifiers, after the MindSpore XAI contract.

Pure PyTorch: no service code. Every explainer is built from the network and called as
``explainer(inputs, targets)``; see :mod:`workers.xai._base` for the contract.
"""

from ._activation_rules import RectifierTape
from ._attention import AttentionTape
from ._base import Explainer
from ._model_state import explaining
from ._perturbation import PerturbationExplainer
from ._smoothing import smooth_maps
from ._tokens import is_token_layer, token_grid, tokens_to_grid
from ._top_targets import TopTargets
from .attention import AttentionGradient, AttentionRollout
from .deconvolution import Deconvolution
from .gradcam import GradCAM
from .gradient import Gradient
from .guided_backprop import GuidedBackprop
from .guided_gradcam import GuidedGradCAM
from .input_x_gradient import InputXGradient
from .integrated_gradients import IntegratedGradients
from .layer_gradient_x_activation import LayerGradientXActivation
from .occlusion import Occlusion
from .ood_net import OoDNet, features_of_pass
from .rise import RISE
from .rise_plus import RISEPlus
from .smoothgrad import SmoothGrad
from .spatial import SpatialScores, box_mask, cell_average

__all__ = [
    "RISE",
    "AttentionGradient",
    "AttentionRollout",
    "AttentionTape",
    "Deconvolution",
    "Explainer",
    "GradCAM",
    "Gradient",
    "GuidedBackprop",
    "GuidedGradCAM",
    "InputXGradient",
    "IntegratedGradients",
    "LayerGradientXActivation",
    "Occlusion",
    "OoDNet",
    "PerturbationExplainer",
    "RISEPlus",
    "RectifierTape",
    "SmoothGrad",
    "SpatialScores",
    "TopTargets",
    "box_mask",
    "cell_average",
    "explaining",
    "features_of_pass",
    "is_token_layer",
    "smooth_maps",
    "token_grid",
    "tokens_to_grid",
]
