import pytest
import torch

from fsad.methods.spade import SPADE


def brute_force(spade: SPADE, support: torch.Tensor, test: torch.Tensor, top_k: int):
    """Loop over test images and pixels: image kNN, then per-pixel nearest gallery feature."""
    s_pooled, s_pixels = spade.embed(support)
    t_pooled, t_pixels = spade.embed(test)
    maps, image = [], []
    for i in range(len(test)):
        d = torch.stack([torch.linalg.vector_norm(t_pooled[i] - s) for s in s_pooled])
        nearest = d.argsort()[:top_k]
        image.append(d[nearest].mean())
        gallery = s_pixels[nearest].permute(0, 2, 3, 1).reshape(-1, s_pixels.shape[1])
        _, h, w = t_pixels[i].shape
        m = torch.empty(h, w)
        for y in range(h):
            for x in range(w):
                m[y, x] = torch.linalg.vector_norm(gallery - t_pixels[i, :, y, x], dim=1).min()
        maps.append(m)
    return torch.stack(maps), torch.stack(image)


@pytest.mark.parametrize("top_k", [50, 2])  # 50 >= K: whole support set; 2 < K: per-image gallery
def test_spade_matches_brute_force(backbone, images, top_k):
    support, test = images
    # image_size = feature size and no blur: the maps are the raw kNN distances
    spade = SPADE(backbone, image_size=8, top_k=top_k, sigma=0)
    spade.fit(support)
    scores = spade.predict(test)
    maps, image = brute_force(spade, support, test, top_k)
    assert torch.allclose(scores.maps, maps, rtol=1e-3, atol=1e-3)
    assert torch.allclose(scores.image, image, rtol=1e-4, atol=1e-4)


def test_spade_needs_fit(backbone, images):
    with pytest.raises(RuntimeError, match="fit"):
        SPADE(backbone, image_size=32).predict(images[1])
