"""Preprocessing geometry, panoptic fusion on the original image, and the visual-encoder demo tool
(tools/segment_image.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from omg_llava.inference.image_io import PAD_COLOR, load_image, preprocess_image

from conftest import REPO_ROOT, load_tool


def test_pad_to_square_geometry_round_trip():
    image = Image.new('RGB', (300, 200), (255, 0, 0))  # W=300, H=200 -> 50 px bands top and bottom
    pixels, geometry = preprocess_image(image, 150)
    assert pixels.shape == (3, 150, 150) and geometry.offset == (50, 0) and geometry.scale == 0.5
    red = (1.0 - 0.4814) / 0.2686
    pad = (PAD_COLOR[0] / 255 - 0.4814) / 0.2686
    assert abs(pixels[0, 75, 75].item() - red) < 1e-3 and abs(pixels[0, 5, 75].item() - pad) < 1e-3
    assert torch.equal(geometry.points_to_input(torch.tensor([[100.0, 20.0]])),
                       torch.tensor([[50.0, 35.0]]))
    assert torch.equal(geometry.boxes_to_input(torch.tensor([[0.0, 0.0, 300.0, 200.0]])),
                       torch.tensor([[0.0, 25.0, 150.0, 125.0]]))
    logits = torch.full((1, 10, 10), -5.0)
    logits[0, 5:, :] = 5.0  # lower half of the square
    mask = geometry.logits_to_original(logits)[0] > 0
    assert mask.shape == (200, 300) and mask[150:].all() and not mask[:100].any()


def test_normalisation_uses_the_released_statistics():
    # The released configs give the image processor mean (0.4814, 0.4578, 0.4082) and std (0.2686,
    # 0.2613, 0.2757); OpenAI's full-precision values would put a white pixel 6.4e-4 lower in the
    # blue channel.
    white = Image.new('RGB', (8, 8), (255, 255, 255))
    pixels, _ = preprocess_image(white, 8)
    released = torch.tensor([(1 - 0.4814) / 0.2686, (1 - 0.4578) / 0.2613, (1 - 0.4082) / 0.2757])
    full_precision = torch.tensor([(1 - 0.48145466) / 0.26862954, (1 - 0.4578275) / 0.26130258,
                                   (1 - 0.40821073) / 0.27577711])
    assert torch.allclose(pixels[:, 0, 0], released, atol=1e-6)
    assert (pixels[:, 0, 0] - full_precision).abs().max() > 6e-4
    assert PAD_COLOR == (122, 116, 104)  # int(255 * mean), spec §1.1


def test_unreadable_image_is_a_clear_error(tmp_path):
    (tmp_path / 'broken.png').write_bytes(b'not an image')
    with pytest.raises(ValueError, match='cannot read'):
        load_image(tmp_path / 'broken.png')
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / 'missing.png')


def test_readme_demo_writes_an_overlay(tmp_path, capsys):
    from skimage import data
    Image.fromarray(data.chelsea()).save(tmp_path / 'chelsea.png')
    assert (
        load_tool('segment_image').main(
            [
                '--out-dir',
                str(tmp_path),
                '--image',
                str(tmp_path / 'chelsea.png'),
                '--config',
                str(REPO_ROOT / 'configs' / 'tiny' / 'omg_llava_tiny_finetune.py'),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert 'random weights' in out and 'network input 256px' in out
    overlay = np.asarray(Image.open(tmp_path / 'panoptic_overlay.png'))
    assert overlay.shape == (300, 451, 3)  # skimage's chelsea at its original size
    ids = np.asarray(Image.open(tmp_path / 'panoptic.png')).astype(np.int64)
    assert ids.shape == (300, 451, 3)
