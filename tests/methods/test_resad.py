import torch

from fsad.methods.resad import ResAD, ResADHead, residuals


def test_residual_is_feature_minus_nearest_reference():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 3, 4, generator=generator)
    reference = torch.randn(30, 5, generator=generator)
    got = residuals(features, reference)
    for b in range(2):
        for y in range(3):
            for x in range(4):
                f = features[b, :, y, x]
                nearest = reference[torch.linalg.vector_norm(reference - f, dim=1).argmin()]
                assert torch.allclose(got[b, :, y, x], f - nearest, atol=1e-5)


def test_a_support_image_has_zero_residual(backbone, images):
    support, _ = images
    resad = ResAD(backbone, image_size=32)
    resad.fit(support)
    for features, reference in zip(resad.embed(support[:1]), resad.references):
        assert residuals(features, reference).abs().max() < 1e-3


def test_save_load_round_trip(backbone, images, tmp_path):
    from fsad.config import ResADSettings

    support, test = images
    torch.manual_seed(0)
    head = ResADHead(backbone.channels)
    for p in head.parameters():
        p.data.normal_(0, 0.1)
    trained = ResAD(backbone, image_size=32, head=head)
    trained.save(tmp_path / "resad.pt", ResADSettings(), {"a": "real"})
    loaded = ResAD(backbone, image_size=32)
    record = loaded.load(tmp_path / "resad.pt")
    assert record["sources"] == {"a": "real"}
    for m in (trained, loaded):
        m.fit(support)
    assert torch.allclose(trained.predict(test).maps, loaded.predict(test).maps)


def test_saved_head_records_its_training_data(backbone, toy_root, tmp_path):
    import shutil

    from fsad.config import ResADSettings
    from fsad.data.mvtec import load_category

    shutil.copytree(toy_root / "ring", tmp_path / "data" / "ring")
    ring = load_category(tmp_path / "data", "ring")
    resad = ResAD(backbone, image_size=32, head=ResADHead(backbone.channels))
    path = tmp_path / "resad.pt"
    resad.save(path, ResADSettings(), {"ring": "real"}, [ring])
    assert ResAD.saved_differences(path, ResADSettings(), [ring]) == []
    assert ResAD.saved_differences(path, ResADSettings(steps=7), [ring])[0].startswith("steps: ")
    (ring.path / "test" / "good" / "000.png").unlink()  # test images feed ResAD's training too
    changed = ResAD.saved_differences(path, ResADSettings(), [load_category(tmp_path / "data", "ring")])
    assert changed == ["the files of training category ring changed"]


def test_the_head_learns_from_fp32_features_whatever_the_precision(backbone, toy_root):
    """precision is a test-time setting (not in the saved head's key): a bf16 detector trains the same head."""
    import copy

    from fsad.config import ResADSettings
    from fsad.data.mvtec import load_category

    ring = load_category(toy_root, "ring")
    heads = {}
    for precision in ("fp32", "bf16"):
        net = copy.deepcopy(backbone).eval()
        net.precision = precision  # runtime torch: torch.autocast's bf16 at test time
        resad = ResAD(net, image_size=32)
        resad.train([ring], ResADSettings(steps=2, max_images=8, synthetic_per_category=4, textures=""), progress=False)
        assert resad.backbone.precision == precision  # test-time features keep their setting
        heads[precision] = resad.head.state_dict()
    for name, tensor in heads["fp32"].items():
        torch.testing.assert_close(heads["bf16"][name], tensor, rtol=0, atol=0)
