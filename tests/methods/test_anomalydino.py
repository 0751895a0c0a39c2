"""AnomalyDINO against plain references; the DINOv2 backbone with random weights (shapes) and a hand-made checkpoint."""

import pytest
import torch
import torch.nn.functional as F

from fsad.components.dinov2 import DinoV2Features
from fsad.components.weights import MissingWeightsError, cache_dir
from fsad.methods.anomalydino import AnomalyDINO, foreground_mask, mean_top_fraction, rotated_copies
from fsad.methods.base import positions


def test_image_score_is_the_mean_of_the_top_percent():
    values = torch.arange(300.0)[None]  # 1 % of 300 = the 3 largest
    assert float(mean_top_fraction(values)) == pytest.approx((299 + 298 + 297) / 3)
    assert float(mean_top_fraction(torch.tensor([[0.5, 3.0, 1.0]]))) == 3.0  # under 100 patches: the largest


def test_patch_scores_are_cosine_distances_to_the_nearest_support_patch(backbone, images):
    support, test = images
    method = AnomalyDINO(backbone, image_size=4, rotation=False, sigma=0)  # stride 8 on 32 px: 4 x 4 patches
    method.fit(support)
    scores = method.predict(test)
    raw_support = positions(method._raw(support.float() / 255))  # plain reference: cosine similarity of raw features
    raw_test = positions(method._raw(test.float() / 255))
    similarity = F.normalize(raw_test, dim=1) @ F.normalize(raw_support, dim=1).T
    expected = (1 - similarity.amax(dim=1)).view(3, 4, 4)
    torch.testing.assert_close(scores.maps, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scores.image, expected.flatten(1).amax(dim=1), rtol=1e-4, atol=1e-4)  # 16 patches: the max


def test_rotated_copies_start_with_the_images_and_hold_the_quarter_turns():
    images = torch.rand(2, 3, 16, 16)
    copies = rotated_copies(images)
    assert copies.shape == (16, 3, 16, 16)
    torch.testing.assert_close(copies[:2], images, rtol=0, atol=1e-5)
    quarter = copies[4:6]  # 90 degrees: a permutation of pixels (either direction)
    assert min((quarter - torch.rot90(images, k, dims=(2, 3))).abs().max() for k in (1, 3)) < 1e-4


def test_rotation_multiplies_the_bank_by_eight(backbone, images):
    method = AnomalyDINO(backbone, image_size=32)
    method.fit(images[0])
    assert method.bank.shape == (8 * 4 * 16, 32 + 96)
    torch.testing.assert_close(method.bank.norm(dim=1), torch.ones(len(method.bank)))


def test_foreground_mask_keeps_the_object_whichever_sign_the_component_has():
    features = torch.zeros(4, 10, 10)
    features[0, 3:7, 3:7] = 50.0  # a centred object far out along one direction
    features[1] = torch.linspace(0, 1, 10)  # a little variance elsewhere
    for sign in (1.0, -1.0):
        mask = foreground_mask(sign * features, threshold=10)
        expected = torch.zeros(10, 10, dtype=torch.bool)
        expected[2:8, 2:8] = True  # the object, dilated by one patch (closing changes nothing here)
        assert torch.equal(mask, expected)


def test_masked_patches_score_zero(backbone, images):
    method = AnomalyDINO(backbone, image_size=32, rotation=False, masking=True, mask_threshold=1e9, sigma=0)
    method.fit(images[0])
    assert (method.predict(images[1]).maps == 0).all()  # nothing passes the threshold: all background


@pytest.fixture(scope="module")
def random_vit():
    torch.manual_seed(0)
    return DinoV2Features(pretrained=False).eval()


def test_dinov2_patch_tokens_have_the_grid_of_the_input(random_vit):
    vit = random_vit
    with torch.no_grad():
        assert vit(torch.rand(2, 3, 28, 42)).shape == (2, 384, 2, 3)
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        vit(torch.rand(1, 3, 30, 28))
    with pytest.raises(ValueError, match="multiple of 14"):
        AnomalyDINO(vit, image_size=32, resolution=50)


def test_dinov2_official_checkpoint_loads_into_timm_vit(random_vit, tmp_path):
    reference = random_vit
    # The hub checkpoint's keys are timm's plus the (unused) mask token.
    official = {**reference.vit.state_dict(), "mask_token": torch.zeros(1, 384)}
    torch.save(official, tmp_path / "dinov2_vits14_pretrain.pth")
    torch.manual_seed(1)
    loaded = DinoV2Features(weights_path=tmp_path / "dinov2_vits14_pretrain.pth")
    assert all(torch.equal(v, loaded.vit.state_dict()[k]) for k, v in reference.vit.state_dict().items())
    assert loaded.weights_file == tmp_path / "dinov2_vits14_pretrain.pth"


def test_missing_dinov2_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise OSError(f"no network for {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(MissingWeightsError, match="dinov2_vits14_pretrain.pth") as info:
        DinoV2Features()
    assert str(cache_dir()) in str(info.value) and "weights_path" in str(info.value)
