import math

import torch

from fsad.methods.base import positions
from fsad.methods.patchcore import PatchCore, greedy_coreset, reweighted_score


def brute_force_coreset(x: torch.Tensor, count: int, start: int) -> list[int]:
    chosen = [start]
    while len(chosen) < count:
        gaps = [min(float(torch.linalg.vector_norm(x[i] - x[j])) for j in chosen) for i in range(len(x))]
        chosen.append(max(range(len(x)), key=gaps.__getitem__))
    return chosen


def test_greedy_coreset_picks_the_farthest_point_each_step():
    x = torch.randn(60, 5, generator=torch.Generator().manual_seed(0))
    got = greedy_coreset(x, 12, projection_dim=None, seed=7)
    assert got.tolist() == brute_force_coreset(x, 12, int(got[0]))


def test_greedy_coreset_with_projection_gives_distinct_rows():
    x = torch.randn(200, 300)
    got = greedy_coreset(x, 50, projection_dim=16, seed=0)
    assert len(set(got.tolist())) == 50


def test_reweighting_hand_case():
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    # m_test = (3, 0): m* = (1, 0) at s* = 2; N_2(m*) = {(1, 0), (0, 0)} at distances 2 and 3
    score = reweighted_score(torch.tensor([3.0, 0.0]), bank, neighbours=2)
    expected = (1 - math.exp(2) / (math.exp(2) + math.exp(3))) * 2
    assert math.isclose(float(score), expected, rel_tol=1e-6)


def test_full_ratio_keeps_every_support_patch(backbone, images):
    support, test = images
    patchcore = PatchCore(backbone, image_size=32, coreset_ratio=1.0)
    patchcore.fit(support)
    assert torch.equal(patchcore.bank, positions(patchcore.embed(support)[0]))
    half = PatchCore(backbone, image_size=32, coreset_ratio=0.5)
    half.fit(support)
    assert len(half.bank) == len(patchcore.bank) // 2


def test_patch_scores_are_nearest_bank_distances(backbone, images):
    support, test = images
    patchcore = PatchCore(backbone, image_size=4, sigma=0)  # stride 8 on 32 px: 4 x 4 patches
    patchcore.fit(support)
    scores = patchcore.predict(test)
    patches = patchcore.embed(test)[0]
    expected = torch.cdist(positions(patches), patchcore.bank).min(dim=1).values.view(3, 4, 4)
    assert torch.allclose(scores.maps, expected, rtol=1e-3, atol=1e-3)
    assert (scores.image <= scores.maps.flatten(1).amax(dim=1) + 1e-4).all()  # weights are in (0, 1)
