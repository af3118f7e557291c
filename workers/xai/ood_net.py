"""OoDNet: Generalized ODIN (Hsu et al., 2020) heads on a classifier's features, as MindSpore XAI ships it.

``h_i(x) = cos(w_i, φ(x) - m)`` (a bias-free linear layer on L2-normalised features and weights),
``g(x) = sigmoid(BN(linear(φ(x))))``; training fits ``h / g`` with cross-entropy on in-distribution data
only; in eval mode the output is ``h`` (N, C) and the OoD score is ``max_i h_i(x)`` (higher: more
in-distribution). ``φ`` is the classifier's forward with ``output_features = True``.

``m`` is zero — MindSpore XAI's ``h`` — unless the heads are trained with ``center_features=True``;
then it is the mean of the in-distribution features, measured before training (and again after it
when the classifier trains too). ReLU features share a large common component, so every class
weight points partly along it, and an input the classifier has no evidence about (uniform noise)
lands close to some class weight; centred, the cosine measures the class-specific part only (as
nearest-centroid classifiers centre features before normalising them). On lenet5-shapes this moves
the AUROC against uniform noise from 0.13 to 0.91 (docs/models.md).

The classifier is *not* a registered submodule: ``state_dict()``, ``parameters()``, ``train()``/``eval()``
and ``.to()`` cover the two heads only, so the heads are saved and loaded on their own and the shared
classifier is never switched to training mode behind its owner's back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from ._model_state import explaining
from ._validation import check_network, check_positive_int

Callback = Callable[[int, float], object]


@contextmanager
def features_of(network: nn.Module) -> Iterator[nn.Module]:
    """``network.output_features = True`` for the block, the old value put back after."""
    before = network.output_features
    network.output_features = True
    try:
        yield network
    finally:
        network.output_features = before


@contextmanager
def features_of_pass(network: nn.Module, module_name: str, rows: int) -> Iterator[list[Tensor]]:
    """The (detached) output of ``network``'s module ``module_name`` in the first forward pass of the block
    over ``rows`` inputs, appended to the list yielded once that pass ran: with the name
    :meth:`OoDNet.feature_module` found, the features of a pass the caller runs anyway."""
    found: list[Tensor] = []

    def record(module: nn.Module, args: tuple, output: object) -> None:
        if not found and isinstance(output, Tensor) and output.dim() == 2 and output.shape[0] == rows:
            found.append(output.detach())

    handle = network.get_submodule(module_name).register_forward_hook(record)
    try:
        yield found
    finally:
        handle.remove()


class OoDNet(nn.Module):
    """``OoDNet(underlying, num_classes)(x) -> (N, num_classes)``: ``h / g`` logits in training mode, ``h`` in eval.

    ``underlying`` must have ``num_features`` (int) and ``output_features`` (bool); with
    ``output_features`` set its forward returns the (N, num_features) features.
    """

    def __init__(self, underlying: nn.Module, num_classes: int) -> None:
        super().__init__()
        check_network(underlying, "underlying")
        self._num_classes = check_positive_int(num_classes, "num_classes")
        missing = [name for name in ("num_features", "output_features") if not hasattr(underlying, name)]
        if missing:
            raise AttributeError(
                f"underlying must have the attributes num_features (int) and output_features (bool); missing {missing}"
            )
        self._num_features = check_positive_int(underlying.num_features, "underlying.num_features")
        if not isinstance(underlying.output_features, bool):
            found = type(underlying.output_features).__name__
            raise TypeError(f"underlying.output_features must be a bool, got {found}")
        object.__setattr__(self, "_underlying", underlying)  # not a submodule: see the module docstring
        self.h = nn.Linear(self._num_features, num_classes, bias=False)
        nn.init.kaiming_normal_(self.h.weight, nonlinearity="relu")
        self.g_fc = nn.Linear(self._num_features, 1)
        self.g_bn = nn.BatchNorm1d(1)
        self.register_buffer("feature_mean", torch.zeros(self._num_features))
        param = next(underlying.parameters(), None)
        if param is not None:
            self.to(param.device, param.dtype if param.is_floating_point() else None)
        self.set_train(False)

    @property
    def underlying(self) -> nn.Module:
        return self._underlying

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def features(self, x: Tensor, through: nn.Module | None = None) -> Tensor:
        """(N, C, H, W) -> (N, num_features): the underlying classifier's features.

        ``through``: a stand-in for the classifier with the same weights (its forward-only twin).
        """
        network = self._underlying if through is None else through
        with features_of(network):
            features = network(x)
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[1] != self._num_features:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"underlying must return (N, num_features={self._num_features}) features "
                f"when output_features is set, got {shape}"
            )
        return features

    def feature_module(self, sample: Tensor) -> str | None:
        """The name of the classifier's module whose output, in its plain forward pass, is the features
        the heads read, so that a pass run anyway (an explanation's) also gives the OoD score, through a
        forward hook (:func:`features_of_pass`), instead of a pass of its own. None when no module is.

        Checked on ``sample``, outside autograd: the module runs once per pass; with ``output_features``
        set, its output is the very tensor the classifier returns; and in a plain pass,
        ``classify_features`` of its output gives the pass's scores (to 1e-5: the same operations on the
        same values). A classifier without ``classify_features`` has none."""
        network = self._underlying
        classify = getattr(network, "classify_features", None)
        if not callable(classify):
            return None
        outputs: dict[str, list[object]] = {}

        def recorder(name: str) -> Callable[[nn.Module, tuple, object], None]:
            return lambda module, args, output: outputs.setdefault(name, []).append(output)

        handles = [module.register_forward_hook(recorder(name)) for name, module in network.named_modules() if name]
        try:
            with explaining(network), torch.no_grad():
                features = self.features(sample)
                named = [name for name, seen in outputs.items() if len(seen) == 1 and seen[0] is features]
                outputs.clear()
                scores = network(sample)
        finally:
            for handle in handles:
                handle.remove()
        if not isinstance(scores, Tensor):
            return None
        with torch.no_grad():
            for name in reversed(named):
                plain = outputs.get(name, [])
                found = plain[0] if len(plain) == 1 else None
                same_shape = isinstance(found, Tensor) and found.shape == features.shape
                if same_shape and torch.allclose(classify(found), scores, rtol=1e-5, atol=1e-5):
                    return name
        return None

    def cosine(self, features: Tensor) -> Tensor:
        """(N, num_features) -> (N, num_classes): ``h``, the cosine of centred features and class weights."""
        return _normalise(features - self.feature_mean) @ _normalise(self.h.weight).t()

    def temperature(self, features: Tensor) -> Tensor:
        """(N, num_features) -> (N, 1): ``g`` in (0, 1)."""
        return torch.sigmoid(self.g_bn(self.g_fc(features)))

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        scores = self.cosine(features)
        return scores / self.temperature(features) if self.training else scores

    def fit_feature_mean(self, dataset: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
        """Set ``m`` to the mean of the classifier's features over ``dataset``'s images; returns it."""
        device, total, count = self.h.weight.device, None, 0
        with explaining(self._underlying), torch.no_grad():
            for images, _ in dataset:
                features = self.features(images.to(device)).double()
                total = features.sum(0) if total is None else total + features.sum(0)
                count += len(features)
        if total is None:
            raise ValueError("dataset holds no images")
        self.feature_mean.copy_(total / count)
        return self.feature_mean

    def ood_score(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N,): ``max_i h_i(x)``, higher for more in-distribution inputs."""
        return self.score_features(self.features(x))

    def score_features(self, features: Tensor) -> Tensor:
        """(N, num_features) -> (N,): ``cosine(features).amax(dim=1)`` in half the operations: a row's
        length is a positive factor, taken out of the max, and outside autograd the unit class weights
        are computed once per change of the weights. Next to a small classifier every operation counts
        (on LeNet-5 the score is a few per cent of a prediction this way; docs/benchmarks.md)."""
        centred = features - self.feature_mean
        return (centred @ self._unit_weights()).amax(dim=1) / (centred.norm(dim=1) + 1e-4)

    def _unit_weights(self) -> Tensor:
        """The class weights scaled to unit length, transposed: (num_features, num_classes)."""
        weight = self.h.weight
        if torch.is_grad_enabled() and weight.requires_grad:
            return _normalise(weight).t()
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype)
        cached = self.__dict__.get("_unit_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, _normalise(weight).t().contiguous())
            self.__dict__["_unit_cache"] = cached
        return cached[1]

    def set_train(self, mode: bool = True) -> OoDNet:
        """Training mode of the heads (the classifier's own flags are left alone)."""
        return nn.Module.train(self, mode)

    def train(  # type: ignore[override]
        self,
        dataset: Iterable[tuple[Tensor, Tensor]] | bool = True,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        callbacks: Callback | list[Callback] | None = None,
        epoch: int = 90,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        *,
        center_features: bool = False,
        **kwargs: object,
    ) -> OoDNet:
        """Fit the heads on (image, label) batches of in-distribution data (a torch ``DataLoader``).

        ``loss_fn`` defaults to cross-entropy (labels as class indices or one-hot probabilities);
        ``callbacks(epoch, mean_loss)`` run after every epoch. Without ``optimizer``/``scheduler``,
        :meth:`prepare_train` makes them from ``kwargs``. The classifier is frozen and in eval mode
        unless ``train_underlying=True``, and given back as found. ``center_features``: measure ``m``
        (:meth:`fit_feature_mean`) first, so the heads train on centred features; without it ``m`` is
        left as it is (zero for new heads). ``train(bool)`` is ``nn.Module.train``, so ``eval()`` keeps
        working.
        """
        if isinstance(dataset, bool):
            return self.set_train(dataset)
        epochs = check_positive_int(epoch, "epoch")
        loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        callbacks = [] if callbacks is None else callbacks if isinstance(callbacks, list) else [callbacks]
        if not all(callable(callback) for callback in callbacks):
            raise TypeError("callbacks must be a callable or a list of callables")
        if not isinstance(center_features, bool):
            raise TypeError(f"center_features must be a bool, got {type(center_features).__name__}")
        train_underlying = kwargs.get("train_underlying", False)
        if center_features:
            self.fit_feature_mean(dataset)
        if optimizer is None or scheduler is None:
            made_optimizer, made_scheduler = self.prepare_train(**kwargs)
            optimizer = made_optimizer if optimizer is None else optimizer
            scheduler = made_scheduler if scheduler is None else scheduler
        device = self.h.weight.device
        with ExitStack() as stack:
            if train_underlying:
                stack.enter_context(_training(self._underlying))
            else:
                stack.enter_context(explaining(self._underlying))
            stack.enter_context(_training(self))
            for done in range(1, epochs + 1):
                total, batches = 0.0, 0
                for images, labels in dataset:
                    loss = loss_fn(self(images.to(device)), labels.to(device))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total, batches = total + float(loss.detach()), batches + 1
                scheduler.step()
                for callback in callbacks:
                    callback(done, total / max(batches, 1))
        if center_features and train_underlying:  # the features moved while the classifier trained
            self.fit_feature_mean(dataset)
        return self

    def get_train_parameters(self, train_underlying: bool = False) -> list[nn.Parameter]:
        """The heads' parameters, and the classifier's with ``train_underlying``."""
        underlying = list(self._underlying.parameters()) if train_underlying else []
        return underlying + list(self.h.parameters()) + list(self.g_fc.parameters()) + list(self.g_bn.parameters())

    def prepare_train(
        self,
        learning_rate: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0001,
        lr_base_factor: float = 0.1,
        lr_epoch_denom: int = 30,
        train_underlying: bool = False,
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """SGD over :meth:`get_train_parameters`; lr ``learning_rate · lr_base_factor ** (epoch // lr_epoch_denom)``."""
        if not isinstance(train_underlying, bool):
            raise TypeError(f"train_underlying must be a bool, got {type(train_underlying).__name__}")
        check_positive_int(lr_epoch_denom, "lr_epoch_denom")
        optimizer = torch.optim.SGD(
            self.get_train_parameters(train_underlying), lr=learning_rate, momentum=momentum, weight_decay=weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: lr_base_factor ** (epoch // lr_epoch_denom)
        )
        return optimizer, scheduler

    def save(self, path: str | Path) -> None:
        """Write the heads' weights (not the classifier's) to ``path``."""
        torch.save(self.state_dict(), path)

    def load(self, path: str | Path) -> OoDNet:
        """Read heads written by :meth:`save` (``weights_only``); they must fit this classifier and class count.

        Heads saved without ``feature_mean`` (MindSpore's form) load with ``m = 0``.
        """
        state = torch.load(path, map_location=self.h.weight.device, weights_only=True)
        expected = tuple(self.h.weight.shape)
        found = tuple(state.get("h.weight", torch.empty(0)).shape)
        if found != expected:
            raise ValueError(f"heads in {path} have h.weight of shape {found}, expected {expected}")
        state.setdefault("feature_mean", torch.zeros_like(self.feature_mean))
        self.load_state_dict(state)
        return self


@contextmanager
def _training(module: nn.Module) -> Iterator[nn.Module]:
    """Training mode and trainable parameters for the block; every flag put back after."""
    flags = [(sub, sub.training) for sub in module.modules()]
    frozen = [param for param in module.parameters() if not param.requires_grad]
    nn.Module.train(module, True)
    for param in frozen:
        param.requires_grad_(True)
    try:
        yield module
    finally:
        for sub, flag in flags:
            sub.training = flag
        for param in frozen:
            param.requires_grad_(False)


def _normalise(x: Tensor) -> Tensor:
    """Rows scaled to unit length (``+ 1e-4`` in the norm, as MindSpore XAI: zero rows stay zero)."""
    return x / (x.norm(dim=1, keepdim=True) + 1e-4)
