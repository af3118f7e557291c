"""What the local commands share: ``--method NAME[:key=value,...]``."""

from __future__ import annotations

import pytest

from workers.commands import QUICK, parse_method


def test_a_method_and_its_parameters_in_one_word():
    assert parse_method("gradcam").params.layer is None
    rise = parse_method("rise:num_masks=2000,keep_probability=0.4,tolerance=0.01")
    assert (rise.params.num_masks, rise.params.keep_probability, rise.params.tolerance) == (2000, 0.4, 0.01)
    occlusion = parse_method("occlusion:window=[3,3],strides=[1,2]")  # commas inside brackets stay
    assert occlusion.params.window == (3, 3) and occlusion.params.strides == (1, 2)
    layer = parse_method("gradcam:layer=conv2")  # not JSON: a string
    assert layer.params.layer == "conv2"
    assert parse_method("rise", quick=True).params.num_masks == QUICK["rise"]["num_masks"]
    assert parse_method("rise:num_masks=50", quick=True).params.num_masks == 50, "given beats quick"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("lime", "unknown method 'lime'"),
        ("rise:num_masks", "write NAME:key=value"),
        ("rise:num_masks=0", "num_masks: Input should be greater than or equal to 1"),
        ("gradient:steps=3", "steps: Extra inputs are not permitted"),
    ],
)
def test_a_bad_method_is_refused_with_the_reason(given, message):
    with pytest.raises(SystemExit, match=message):
        parse_method(given)
