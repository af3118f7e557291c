"""The quality scores against cases small enough to work out by hand.

The image is one row of four pixels, [1, 1, 0, 0]; the "network" gives class 0 the probability
sum(pixels) / 2 and class 1 the rest, so every point of a curve is a fraction we can write down.
Tolerances are 1e-6: the arithmetic is a handful of float32 sums.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.queues

import pytest
import torch
from torch import nn

from workers.xai.quality import (
    area,
    average_ranks,
    complexity,
    constant,
    correlation,
    faithfulness,
    iosr,
    mean_colour,
    pointing_hits,
    randomised_copy,
    rank_correlation,
    salience_ranks,
    sparseness,
)

IMAGE = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
RIGHT = torch.tensor([0.9, 0.8, 0.1, 0.0]).reshape(1, 1, 1, 4)  # the two pixels that matter first
WRONG = torch.tensor([0.0, 0.1, 0.8, 0.9]).reshape(1, 1, 1, 4)  # ... last


def half_sum(inputs: torch.Tensor) -> torch.Tensor:
    first = inputs.flatten(1).sum(1) / 2
    return torch.stack([first, 1 - first], dim=1)


def test_sparseness_is_the_gini_index_of_the_absolute_values():
    assert sparseness(torch.tensor([[0.0, 0.0], [0.0, 5.0]])).item() == pytest.approx(3 / 4)  # (n - 1) / n
    assert sparseness(torch.tensor([[1.0, -1.0], [0.0, 0.0]])).item() == pytest.approx(0.5)  # (1*1 + 3*1) / (4*2)
    assert sparseness(torch.ones(3, 3)).item() == pytest.approx(0.0)
    assert sparseness(torch.zeros(3, 3)).item() == 0.0
    batch = torch.stack([torch.ones(2, 2), torch.tensor([[0.0, 0.0], [0.0, 1.0]])])
    assert sparseness(batch).tolist() == pytest.approx([0.0, 0.75])


def test_complexity_is_the_entropy_over_its_largest_value():
    assert complexity(torch.tensor([[0.0, 0.0], [0.0, 2.0]])).item() == pytest.approx(0.0)
    assert complexity(torch.tensor([[1.0, -1.0], [0.0, 0.0]])).item() == pytest.approx(0.5)  # log 2 / log 4
    assert complexity(torch.full((4, 4), 0.3)).item() == pytest.approx(1.0)
    assert complexity(torch.zeros(2, 2)).item() == 1.0


def test_free_scores_of_many_maps_follow_their_definitions():
    """Batches go through numpy on a CPU, in parts on several threads: every map is scored as the definitions
    say (the Gini index as the mean absolute difference, the entropy of the shares in float64), and its score
    does not depend on which part it fell in. 1e-6: the scores are float32, their sums float64."""
    generator = torch.Generator().manual_seed(3)
    maps = torch.randn(7, 3, 12, 10, generator=generator)
    maps[2, 1] = 0.0
    maps[4, 0] = 0.0
    maps[4, 0, 5, 5] = -2.0
    flat = maps.abs().flatten(-2).double().reshape(-1, 120)
    mean_difference = (flat[:, :, None] - flat[:, None, :]).abs().sum((1, 2)) / (2 * 120 * flat.sum(1))
    gini = torch.where(flat.sum(1) > 0, mean_difference, torch.zeros(21, dtype=torch.float64)).reshape(7, 3)
    shares = [row[row > 0] / row.sum() for row in flat]
    entropies = [-(p * p.log()).sum().item() / math.log(120) if len(p) else 1.0 for p in shares]
    expected = torch.tensor(entropies, dtype=torch.float64).reshape(7, 3)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            assert sparseness(maps).shape == (7, 3)
            assert torch.allclose(sparseness(maps).double(), gini, atol=1e-6)
            assert torch.allclose(complexity(maps).double(), expected, atol=1e-6)
    finally:
        torch.set_num_threads(before)
    assert sparseness(maps[4, 0]).item() == pytest.approx(119 / 120)
    assert complexity(maps[2, 1]).item() == 1.0


def _score_in_child(maps: torch.Tensor, expected: list[float], done: multiprocessing.queues.Queue) -> None:
    torch.set_num_threads(2)
    done.put(torch.allclose(sparseness(maps), torch.tensor(expected), atol=1e-6))


def test_free_scores_run_in_a_forked_child_of_a_process_that_scored_in_parts():
    """The helper threads are made again in a child forked after the parent used them: the parent's pool
    has no threads there, and a task given to it would never run."""
    maps = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(2))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        expected = sparseness(maps).tolist()  # in two parts: the pool exists now
    finally:
        torch.set_num_threads(before)
    context = multiprocessing.get_context("fork")
    done = context.Queue()
    child = context.Process(target=_score_in_child, args=(maps, expected, done))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0, "the child did not finish scoring"
    assert done.get(timeout=5) is True


def test_free_scores_off_numpy_agree_with_numpy():
    """A map numpy does not take (half precision here, a GPU's in service) goes through torch's operations:
    the same scores, to float32's rounding of the same values (1e-6)."""
    maps = torch.rand(4, 2, 16, 16, generator=torch.Generator().manual_seed(5)).half()
    assert torch.allclose(sparseness(maps), sparseness(maps.float()), atol=1e-6)
    assert torch.allclose(complexity(maps), complexity(maps.float()), atol=1e-6)


def test_ranks_put_the_largest_value_first_and_break_ties_in_a_fixed_random_order():
    ranks = salience_ranks(torch.tensor([[0.2, 0.9], [0.2, 0.5]]))
    assert ranks[0, 1] == 0 and ranks[1, 1] == 1 and sorted(ranks[:, 0].tolist()) == [2, 3]
    flat = salience_ranks(torch.zeros(8, 8))
    assert sorted(flat.flatten().tolist()) == list(range(64))
    assert flat.flatten().tolist() != list(range(64)), "not reading order"
    assert torch.equal(flat, salience_ranks(torch.zeros(8, 8))), "the same order every time"
    assert torch.equal(salience_ranks(torch.zeros(2, 8, 8))[1], flat), "and for every map"


def test_the_mean_colour_reference_is_each_image_s_own():
    images = torch.rand(2, 3, 4, 5)
    reference = mean_colour(images)
    assert reference.shape == images.shape
    assert torch.allclose(reference[1, 2], images[1, 2].mean().expand(4, 5))


def test_the_area_is_the_trapezoidal_rule_over_zero_to_one():
    assert area(torch.tensor([1.0, 0.5, 0.0])).item() == pytest.approx(0.5)  # (1 + 0.5) / 4 + (0.5 + 0) / 4
    assert area(torch.ones(17)).item() == pytest.approx(1.0)


def test_deletion_and_insertion_curves_of_a_right_and_a_wrong_map():
    maps = torch.cat([RIGHT, WRONG], dim=1)  # (1, 2, 1, 4): two maps of one image
    found = faithfulness(
        half_sum,
        IMAGE,
        maps,
        torch.zeros(1, 2, dtype=torch.long),
        steps=4,
        deletion_reference=constant(IMAGE),
        insertion_reference=constant(IMAGE),
        confidence_reference=constant(IMAGE),
    )
    # Removing the right map's pixels: 1 (image), 0.5, 0, 0, 0 (reference); the wrong one's: 1, 1, 1, 0.5, 0.
    assert found.deletion[0].tolist() == [pytest.approx([1, 0.5, 0, 0, 0]), pytest.approx([1, 1, 1, 0.5, 0])]
    assert found.deletion_auc[0].tolist() == pytest.approx([0.25, 0.75])  # lower is better: the right map wins
    assert found.insertion[0].tolist() == [pytest.approx([0, 0.5, 1, 1, 1]), pytest.approx([0, 0, 0, 0.5, 1])]
    assert found.insertion_auc[0].tolist() == pytest.approx([0.75, 0.25])  # higher is better
    # x * map / max(map): right -> [1, 8/9, 0, 0] -> 17/18; wrong -> [0, 1/9, 0, 0] -> 1/18; both from 1.
    assert found.confidence_change[0].tolist() == pytest.approx([17 / 18 - 1, 1 / 18 - 1])
    # one image, two references, 2 maps x 3 inner steps each way, 2 confidence passes
    assert found.passes == 1 + 2 * (1 + 2 * 3) + 2


def test_every_target_reads_the_same_passes_and_batches_do_not_change_the_answer():
    images = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(5, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([[0, 1, 2, 0]] * 5)
    weights = torch.randn(3, 3 * 36, generator=torch.Generator().manual_seed(2))

    def scores(inputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(inputs.flatten(1) @ weights.T, dim=1)

    options = {"steps": 5, "deletion_reference": constant(images), "insertion_reference": images * 0.5}
    whole = faithfulness(scores, images, maps, targets, batch_size=1000, **options)
    small = faithfulness(scores, images, maps, targets, batch_size=7, **options)
    assert torch.allclose(whole.deletion, small.deletion, atol=1e-6)
    assert torch.allclose(whole.insertion, small.insertion, atol=1e-6)
    # the curves' ends: the image's own probability and the reference's, the same for every map of an image
    original = scores(images).gather(1, targets)
    assert torch.allclose(whole.deletion[..., 0], original, atol=1e-6)
    assert torch.allclose(whole.insertion[..., -1], original, atol=1e-6)
    assert whole.passes == 5 * (1 + 2 * (1 + 4 * 4))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="disagree"):
        faithfulness(half_sum, IMAGE, RIGHT[:, :, :, :3], torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="steps"):
        faithfulness(half_sum, IMAGE, RIGHT, torch.zeros(1, 1, dtype=torch.long), steps=1)


def test_pointing_and_iosr_against_a_mask():
    masks = torch.tensor([[[True, True, False, False]]])
    assert pointing_hits(RIGHT[0], masks).tolist() == [True]
    assert pointing_hits(WRONG[0], masks).tolist() == [False]
    assert pointing_hits(WRONG[0], masks, tolerance=2).tolist() == [True]  # the mask grown by 2 px reaches it
    assert iosr(RIGHT[0], masks).tolist() == pytest.approx([1.0])  # salient: pixels 0 and 1
    assert iosr(WRONG[0], masks).tolist() == pytest.approx([0.0])
    assert iosr(torch.zeros(1, 1, 4), masks).tolist() == pytest.approx([0.5])  # flat: salient everywhere


def test_correlations():
    a = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0))
    assert correlation(a, 2 * a + 1).tolist() == pytest.approx([1, 1, 1])
    assert correlation(a, -a).tolist() == pytest.approx([-1, -1, -1])
    assert correlation(a, torch.ones(3, 5, 5)).tolist() == [0, 0, 0]
    assert rank_correlation(a, a**3).tolist() == pytest.approx([1, 1, 1])  # same order, other values
    assert rank_correlation(a, -a).tolist() == pytest.approx([1, 1, 1])  # of the absolute values


def test_ranks_of_ties_are_their_mean_place_and_flat_maps_do_not_correlate():
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    zero, half = torch.zeros(4, 4), torch.zeros(4, 4)
    half[:2] = torch.arange(8.0).reshape(2, 4) + 1
    assert rank_correlation(zero, zero).item() == 0.0, "nothing to order: no correlation"
    assert rank_correlation(zero, half).item() == 0.0
    shared = half.clone()
    shared[:2] = shared[:2].flip(1)  # the same zero half, another order on the rest
    by_hand = torch.corrcoef(torch.stack([average_ranks(half.flatten()), average_ranks(shared.flatten())]))[0, 1]
    assert rank_correlation(half, shared).item() == pytest.approx(float(by_hand), abs=1e-6)


def test_passes_are_built_a_batch_at_a_time_whatever_the_number_of_maps_and_steps():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(2, 40, 8, 8, generator=torch.Generator().manual_seed(1))
    seen: list[int] = []

    def scores(inputs: torch.Tensor) -> torch.Tensor:
        seen.append(len(inputs))
        return torch.softmax(inputs.flatten(1)[:, :3], dim=1)

    blank = constant(images)
    found = faithfulness(
        scores, images, maps, torch.zeros(2, 40, dtype=torch.long), steps=64, batch_size=32,
        deletion_reference=blank, insertion_reference=blank, confidence_reference=blank,
    )  # fmt: skip
    assert max(seen) <= 32 and sum(seen) == found.passes == 2 * (1 + 2 * (1 + 40 * 63) + 40)


def test_randomised_copy_draws_the_top_layers_again_and_keeps_the_rest():
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 10)).eval()
    clone = randomised_copy(network, layers=1)
    assert torch.equal(clone[0].weight, network[0].weight) and torch.equal(clone[1].weight, network[1].weight)
    assert not torch.equal(clone[3].weight, network[3].weight)
    assert not clone.training
    again = randomised_copy(network, layers=1)
    assert torch.equal(clone[3].weight, again[3].weight), "seeded"
    deeper = randomised_copy(network, layers=3)
    assert not torch.equal(deeper[0].weight, network[0].weight)
    with pytest.raises(ValueError, match="layers"):
        randomised_copy(network, layers=0)
