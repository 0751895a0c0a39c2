import numpy as np
import pytest
import torch
from PIL import Image

from fsad.data.synthesis import SCRATCH, AnomalySynthesizer, random_blob, textures_from_folder
from fsad.paths import DTD_MINI_DIR


@pytest.mark.parametrize("seed", range(12))
def test_mask_matches_the_altered_pixels(seed):
    image = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    textures = torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(99))
    out, mask, kind = AnomalySynthesizer(textures, seed=seed)(image)
    altered = (out != image).any(dim=0)
    assert mask.sum() > 0
    assert not altered[mask == 0].any(), f"{kind}: pixels outside the mask changed"
    assert altered[mask == 1].float().mean() > 0.9, f"{kind}: the mask covers unchanged pixels"


def test_synthesis_is_reproducible_and_covers_every_kind():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    textures = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    a, b = AnomalySynthesizer(textures, seed=5), AnomalySynthesizer(textures, seed=5)
    runs = [(a(image), b(image)) for _ in range(20)]
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in runs)
    assert {x[2] for x, _ in runs} == {"texture", "cutpaste", "noise"}
    assert AnomalySynthesizer(None, seed=0).kinds == ("cutpaste", "noise")


def test_blob_fraction_is_bounded():
    rng = np.random.default_rng(0)
    fractions = [random_blob(64, rng, max_fraction=0.2).mean() for _ in range(50)]
    assert 0 < min(fractions) and max(fractions) < 0.6


def test_textures_from_folder(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"t{i}.png")
    textures = textures_from_folder(tmp_path, 16, limit=2)
    assert textures.shape == (2, 3, 16, 16) and textures.dtype == torch.uint8
    with pytest.raises(FileNotFoundError, match="no texture"):
        textures_from_folder(tmp_path / "missing", 16)


def test_dtd_mini_textures_load():
    if not DTD_MINI_DIR.is_dir():
        pytest.skip(f"dtd-mini not found at {DTD_MINI_DIR}")
    assert textures_from_folder(DTD_MINI_DIR, 32, limit=5).shape == (5, 3, 32, 32)


@pytest.mark.parametrize("seed", range(8))
def test_scratch_is_a_thin_line_and_the_only_change(seed):
    image = torch.full((3, 64, 64), 120, dtype=torch.uint8)
    synthesizer = AnomalySynthesizer(None, seed=seed, kinds=("cutpaste", "noise", SCRATCH))
    out, mask, kind = synthesizer(image, SCRATCH)
    altered = (out != image).any(dim=0)
    assert kind == SCRATCH and 0 < mask.sum() < 0.05 * 64 * 64  # a line, not a blob
    assert not altered[mask == 0].any() and altered[mask == 1].all()
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) >= 0.15 * 64  # long: 20-60 % of the side


def test_the_default_kinds_and_their_draws_are_unchanged_by_scratches():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert AnomalySynthesizer(None, seed=3).kinds == ("cutpaste", "noise")
    drawn = {AnomalySynthesizer(None, seed=s, kinds=("cutpaste", "noise", SCRATCH))(image)[2] for s in range(30)}
    assert drawn == {"cutpaste", "noise", SCRATCH}
    with pytest.raises(ValueError, match="texture without textures"):
        AnomalySynthesizer(None, kinds=("texture",))
    with pytest.raises(ValueError, match="not one of"):
        AnomalySynthesizer(None)(image, SCRATCH)
