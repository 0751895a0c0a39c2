"""FastRecon against the official closed form written out with an explicit inverse."""

import pytest
import torch

from fsad.methods.base import positions
from fsad.methods.fastrecon import FastRecon, coreset_ratio_for, reconstruct, span_projection


def official_reconstruction(q: torch.Tensor, mu: torch.Tensor, s: torch.Tensor, lam: float) -> torch.Tensor:
    """``W S`` with ``W = (Q S^T + lambda mu S^T) ((1 + lambda) S S^T)^-1``, the official test_step's formula."""
    w = (q @ s.T + lam * mu @ s.T) @ torch.linalg.inv((1 + lam) * s @ s.T)
    return w @ s


def test_reconstruction_equals_the_official_closed_form():
    generator = torch.Generator().manual_seed(0)
    s, q, mu = (torch.randn(n, 12, generator=generator, dtype=torch.float64) for n in (5, 16, 16))
    for lam in (0.0, 2.0, 7.5):
        got = reconstruct(q[None], mu, span_projection(s), lam)[0]
        torch.testing.assert_close(got, official_reconstruction(q, mu, s, lam))


def test_regulariser_pulls_the_reconstruction_to_the_support_mean():
    s = torch.eye(3, 6, dtype=torch.float64)  # span: the first 3 axes
    q = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0, 0.0]], dtype=torch.float64)
    mu = torch.tensor([[0.0, 0.0, 6.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    # lambda = 0: the projection of q; lambda = 2: (q + 2 mu) / 3 projected
    torch.testing.assert_close(reconstruct(q[None], mu, span_projection(s), 0.0)[0], torch.tensor([[1.0, 2.0, 3.0, 0, 0, 0]],
                                                                                                   dtype=torch.float64))
    torch.testing.assert_close(reconstruct(q[None], mu, span_projection(s), 2.0)[0], torch.tensor([[1 / 3, 2 / 3, 5.0, 0, 0, 0]],
                                                                                                   dtype=torch.float64))


def test_detector_scores_are_reconstruction_errors(backbone, images):
    support, test = images
    method = FastRecon(backbone, image_size=4, coreset_ratio=0.05, sigma=0)  # stride 8 on 32 px: 4 x 4 positions
    method.fit(support)
    assert len(method.coreset) == int(0.05 * 4 * 16)
    support_features = method.embed(support)[0]  # 4 x D x 4 x 4
    torch.testing.assert_close(method.mean, positions(support_features.mean(dim=0, keepdim=True)))
    scores = method.predict(test)
    q = positions(method.embed(test)[0]).view(3, 16, -1).double()
    expected = torch.stack([torch.linalg.vector_norm(qi - official_reconstruction(qi, method.mean.double(), method.coreset.double(), 2.0),
                                                     dim=1) for qi in q]).view(3, 4, 4)
    torch.testing.assert_close(scores.maps.double(), expected, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(scores.image.double(), expected.flatten(1).amax(dim=1), rtol=1e-3, atol=1e-3)


def test_default_ratio_keeps_the_official_rows_per_support_image(backbone):
    assert coreset_ratio_for(224) == pytest.approx(0.01)  # the official setting at its image size
    assert coreset_ratio_for(128) == pytest.approx(0.01 * 784 / 256)
    assert coreset_ratio_for(16) == 1.0
    assert FastRecon(backbone, image_size=128).coreset_ratio == coreset_ratio_for(128)
    assert FastRecon(backbone, image_size=128, coreset_ratio=0.01).coreset_ratio == 0.01


def test_bad_settings_and_sizes_are_refused(backbone, images):
    with pytest.raises(ValueError, match="coreset_ratio"):
        FastRecon(backbone, image_size=32, coreset_ratio=0)
    with pytest.raises(ValueError, match="regularization"):
        FastRecon(backbone, image_size=32, regularization=-1)
    method = FastRecon(backbone, image_size=32)
    with pytest.raises(RuntimeError, match="fit"):
        method.predict(images[1])
    method.fit(images[0])
    with pytest.raises(ValueError, match="32 px"):
        method.predict(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
