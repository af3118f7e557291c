"""Pictures that show the truth: a floor and a ceiling, signed maps centred on a diverging colormap,
pixels the network did not see marked, transparent heatmaps, a colour bar."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.contract import RenderOptions
from core.render import COLORMAPS, colorize, heatmap, map_png, normalise, overlay
from models.manifest import Preprocessing

CROP = Preprocessing(size=(32, 32), resize="center_crop", resize_shorter_to=32, mean=(0, 0, 0), std=(1, 1, 1))


def positions_in(image: Image.Image, colormap: str) -> np.ndarray:
    """Each pixel's position in the colormap, 0..1 (the nearest of its 256 colours)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int64).reshape(-1, 1, 3)
    distances = ((rgb - COLORMAPS[colormap][None].astype(np.int64)) ** 2).sum(axis=2)
    return distances.argmin(axis=1) / 255


def test_a_rise_map_of_the_cat_is_drawn_across_the_whole_colormap(efficientnet, cat_input):
    """RISE's map is a weighted mean of probabilities: all of it lies between about 0.56 and 0.73 of its top.
    Divided by a ceiling alone it was a uniform wash (every pixel in the colormap's top quarter)."""
    from core.methods import call
    from workers.methods import Context, build_explainer, explain

    the_call = call("rise", num_masks=300)
    explainer = build_explainer(the_call, Context(efficientnet, "", seed=0))
    values = explain(the_call, explainer, cat_input, torch.tensor([[285]]), lambda f: None)[0, 0].numpy()
    assert values.min() > 0.3 * values.max(), "a map with an offset: the case in point"
    drawn = positions_in(heatmap(values), "inferno")
    assert np.percentile(drawn, 2) < 0.1 and np.percentile(drawn, 98) > 0.9, "it spans the colormap"
    assert np.percentile(drawn, 75) - np.percentile(drawn, 25) > 0.15, "and is not flat"


def test_the_floor_and_the_ceiling_are_percentiles_of_the_values():
    values = np.linspace(10, 20, 1001).reshape(7, 143)[:, :143]
    unit, scale = normalise(values, clip_lower_percentile=10, clip_percentile=90)
    assert scale.low == pytest.approx(11.0, abs=0.01) and scale.high == pytest.approx(19.0, abs=0.01)
    assert unit.min() == 0 and unit.max() == 1
    assert np.mean(unit == 0) == pytest.approx(0.1, abs=0.01) and np.mean(unit == 1) == pytest.approx(0.1, abs=0.01)


def test_both_polarities_put_zero_at_the_middle_of_a_diverging_colormap():
    values = np.array([[-2.0, -1.0, 0.0, 1.0, 4.0]])
    unit, scale = normalise(values, polarity="both", clip_percentile=100)
    np.testing.assert_allclose(unit, [[0.25, 0.375, 0.5, 0.625, 1.0]])
    assert (scale.low, scale.high) == (-4.0, 4.0)
    drawn = np.asarray(heatmap(values, polarity="both", clip_percentile=100))
    middle = COLORMAPS["coolwarm"][128]
    assert tuple(drawn[0, 2]) == tuple(middle) and drawn[0, 0, 2] > drawn[0, 0, 0] and drawn[0, 4, 0] > drawn[0, 4, 2]


def test_pixels_not_seen_are_hatched_or_transparent_never_a_colormap_colour():
    values = np.array([[np.nan, 0.0, 1.0, np.nan]])
    rgb = colorize(normalise(values)[0])
    assert (rgb[0, 0] == rgb[0, 0, 0]).all() and (rgb[0, 3] == rgb[0, 3, 0]).all(), "grey"
    assert tuple(rgb[0, 1]) == tuple(COLORMAPS["inferno"][0])
    rgba = np.asarray(heatmap(values, transparent=True))
    assert rgba.shape == (1, 4, 4) and rgba[0, 0, 3] == 0 and rgba[0, 3, 3] == 0
    assert rgba[0, 1, 3] == 0 and rgba[0, 2, 3] == 255, "opacity is the value's strength"


def test_a_heatmap_is_drawn_at_the_photos_size_with_the_cropped_margins_marked():
    """A 64x32 photo, centre-cropped to 32x32 by the network: the heatmap is 64x32, its left and right
    16 columns hatched grey (not seen), the middle in the colormap."""
    values = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    png = map_png(values, RenderOptions(), photo_size=(64, 32), preprocessing=CROP)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert image.shape == (32, 64, 3)
    margins = np.concatenate([image[:, :16], image[:, 48:]], axis=1)
    assert (margins[..., 0] == margins[..., 1]).all() and (margins[..., 1] == margins[..., 2]).all()
    middle = image[:, 16:48]
    assert (middle[..., 0] != middle[..., 2]).mean() > 0.9, "inferno, not grey"
    at_input = Image.open(
        io.BytesIO(map_png(values, RenderOptions(size="input"), photo_size=(64, 32), preprocessing=CROP))
    )
    assert at_input.size == (32, 32)


def test_an_overlay_greys_what_the_network_did_not_see():
    photo = Image.new("RGB", (64, 32), (255, 0, 0))
    on_photo = np.full((32, 64), np.nan, np.float32)
    on_photo[:, 16:48] = np.random.default_rng(1).random((32, 32))
    drawn = np.asarray(overlay(on_photo, photo)).astype(int)
    assert (drawn[:, :16, 0] == drawn[:, :16, 1]).all(), "the red photo greyed where unseen"
    assert (drawn[:, 16:48, 0] > drawn[:, 16:48, 2]).mean() > 0.5


def test_a_colour_bar_is_drawn_beside_the_map():
    values = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    plain, barred = heatmap(values), heatmap(values, colorbar=True)
    assert barred.height == plain.height and barred.width > plain.width + 8
    bar = np.asarray(barred)[:, plain.width + 6]
    assert tuple(bar[0]) == tuple(COLORMAPS["inferno"][255]) and tuple(bar[-1]) == tuple(COLORMAPS["inferno"][0])


def test_render_options_refuse_a_floor_above_the_ceiling():
    with pytest.raises(ValueError, match="clip_lower_percentile must be below"):
        RenderOptions(clip_lower_percentile=99.5, clip_percentile=50)


def test_a_fixed_scale_draws_two_maps_alike():
    """Shared by maps: the same value gets the same colour in both, whatever else each holds."""
    small, large = np.array([[0.0, 1.0, 2.0]]), np.array([[0.0, 1.0, 10.0]])
    options = RenderOptions(scale=(0.0, 2.0), clip_lower_percentile=0.0)
    first = np.asarray(Image.open(io.BytesIO(map_png(small, options))))
    second = np.asarray(Image.open(io.BytesIO(map_png(large, options))))
    assert (first[0, :2] == second[0, :2]).all() and (second[0, 2] == first[0, 2]).all(), "10 saturates like 2"
    with pytest.raises(ValueError, match="low < high"):
        RenderOptions(scale=(2.0, 1.0))
