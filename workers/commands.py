"""What the local commands (``xai explain``, ``xai evaluate``) share: one model loaded as a worker loads it,
method calls written ``NAME[:key=value,...]``, and a progress bar on a terminal."""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from core.methods import METHODS, MethodCallBase, call
from core.settings import get_settings
from models.registry import ModelRegistry
from workers.model_host import ModelHost

# Cheaper settings than the service's defaults where a method has a cost knob: a photo in seconds.
QUICK = {
    "integrated_gradients": {"steps": 16},
    "smoothgrad": {"samples": 16},
    "rise": {"num_masks": 1000},
    "rise_plus": {"num_masks": 1000},
}


def add_model_arguments(parser: argparse.ArgumentParser, model: str) -> None:
    """``--model`` (default ``model``), ``--model-dirs`` and repeatable ``--method NAME[:key=value,...]``."""
    parser.add_argument("--model", default=model)
    parser.add_argument("--model-dirs", help="comma-separated model folders (default: XAI_MODEL_DIRS)")
    parser.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="NAME[:key=value,...]",
        help="a method and its parameters, e.g. rise:num_masks=2000,keep_probability=0.4; repeat for more "
        "(default: every method the model can run)",
    )


def load_model(model: str, model_dirs: str | None) -> ModelHost:
    """A host serving ``model`` from the comma-separated ``model_dirs`` (default: XAI_MODEL_DIRS, else the
    bundled models); SystemExit naming the problem when the model is unknown or does not load."""
    settings = get_settings()
    registry = ModelRegistry(model_dirs.split(",") if model_dirs else settings.model_dirs)
    if model not in registry.names():
        raise SystemExit(f"unknown model {model!r}; known: {', '.join(registry.names())}")
    host = ModelHost(registry, settings.device, served=[model])
    host.load_all()
    if model in host.failed:
        raise SystemExit(f"model {model!r} did not load: {host.failed[model]}")
    return host


def parse_method(given: str, quick: bool = False) -> MethodCallBase:
    """``NAME`` or ``NAME:key=value,key=value`` (each value as JSON, else a string) -> a validated call;
    ``quick``: :data:`QUICK`'s parameters unless given."""
    name, _, text = given.partition(":")
    if name not in METHODS:
        raise SystemExit(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    params: dict[str, object] = dict(QUICK.get(name, {})) if quick else {}
    for item in filter(None, _top_level_split(text)):
        key, equals, raw = item.partition("=")
        if not equals or not key:
            raise SystemExit(f"--method {given!r}: write NAME:key=value,key=value, e.g. rise:num_masks=2000")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    try:
        return call(name, **params)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in error.errors())
        raise SystemExit(f"--method {given!r}: {problems}") from None


def _top_level_split(text: str) -> list[str]:
    """``a=1,b=[3,3],c="x,y"`` -> ``["a=1", "b=[3,3]", 'c="x,y"']``: commas inside brackets or quotes stay."""
    parts, depth, quoted, current = [], 0, False, []
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "[{":
            depth += 1
        elif not quoted and char in "]}":
            depth -= 1
        if char == "," and depth == 0 and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def method_calls(host: ModelHost, model: str, given: list[str], quick: bool = False) -> list[MethodCallBase]:
    """The calls of ``--method`` options, or of every method the model can run; SystemExit for one it cannot."""
    unavailable = host.capabilities(model).unavailable
    calls = [parse_method(text, quick) for text in given or [m for m in METHODS if m not in unavailable]]
    for the_call in calls:
        if the_call.name in unavailable:
            raise SystemExit(f"{the_call.name} does not run on {model}: {unavailable[the_call.name]}")
    return calls


def draw_bar(label: str, fraction: float) -> None:
    """One line, redrawn in place: the label, a bar and the percentage (a terminal only; a log gets none)."""
    if sys.stdout.isatty():
        filled = int(fraction * 30)
        sys.stdout.write(f"\r{label:28s} [{'#' * filled}{'.' * (30 - filled)}] {fraction * 100:5.1f}%")
        sys.stdout.flush()


def clear_bar() -> None:
    if sys.stdout.isatty():
        sys.stdout.write("\r" + " " * 72 + "\r")
