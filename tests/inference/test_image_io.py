"""Images read as a viewer shows them (EXIF orientation, 16-bit grey, float arrays, alpha masks),
refused with a clear message when they cannot be, and preprocessed in memory bounded by the network
input: the result equals the reference's pad-to-square-then-resize, computed here the direct way."""
from __future__ import annotations

import json
import subprocess
import sys
import zlib
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from omg_llava.inference import image_io
from omg_llava.inference.image_io import (MAX_ASPECT_RATIO, PAD_COLOR, SquareGeometry, load_image,
                                          load_mask, preprocess_image, to_rgb_image)

from conftest import REPO_ROOT

ORIENTATION = 0x0112


def _rng_image(H: int, W: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _save_with_orientation(path, array: np.ndarray, orientation: int) -> None:
    """Save ``array`` as a JPEG/PNG whose EXIF says how to turn it for display."""
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[ORIENTATION] = orientation
    image.save(path, exif=exif.tobytes())


def test_exif_orientation_is_applied_to_images_and_masks(tmp_path):
    # stored 40 wide x 20 high; orientation 6 = "rotate 90° clockwise to display": shown 20 wide x
    # 40 high
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255  # the stored image's left band becomes the displayed top band
    _save_with_orientation(tmp_path / 'photo.png', stored, 6)
    shown = np.asarray(load_image(tmp_path / 'photo.png'))
    assert shown.shape == (40, 20, 3)
    assert (shown[:10] == 255).all() and (shown[10:] == 0).all()
    mask = stored[..., 0].copy()
    _save_with_orientation(tmp_path / 'mask.png', mask, 6)
    read = load_mask(tmp_path / 'mask.png')
    assert read.shape == (40, 20) and read[:10].all() and not read[10:].any()


def _png16(path, grey: np.ndarray) -> None:
    """A 16-bit greyscale PNG written byte by byte (PIL keeps it 16-bit: mode I;16)."""
    H, W = grey.shape
    raw = b''.join(b'\x00' + grey[y].astype('>u2').tobytes() for y in range(H))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I',
                                                                        zlib.crc32(kind + data))

    header = struct.pack('>IIBBBBB', W, H, 16, 0, 0, 0, 0)
    (path).write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT',
                                                                             zlib.compress(raw))
                       + chunk(b'IEND', b''))


def test_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    grey = np.array([[0, 257, 32896], [65535, 1000, 50000]], np.uint16)
    _png16(tmp_path / 'deep.png', grey)
    assert Image.open(tmp_path / 'deep.png').mode.startswith('I;16')
    rgb = np.asarray(load_image(tmp_path / 'deep.png'))
    assert rgb.dtype == np.uint8 and (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb[..., 0].tolist() == [[0, 1, 128], [255, 4, 195]]  # round(v * 255 / 65535)


def test_float_arrays_in_unit_range_are_scaled_and_others_refused():
    photo = _rng_image(6, 5)
    assert np.array_equal(np.asarray(to_rgb_image(photo / 255.0)), photo)
    assert np.array_equal(np.asarray(to_rgb_image(photo.astype(np.float32) / 255)), photo)
    grey = to_rgb_image(np.full((3, 4), 0.5))
    assert np.asarray(grey).shape == (3, 4, 3) and (np.asarray(grey) == 128).all()
    # alpha dropped
    assert np.array_equal(np.asarray(to_rgb_image(np.dstack([photo, photo[..., :1]]))), photo)
    with pytest.raises(ValueError, match=r'values in \[0, 1\], got values in \[0, 2\d\d\]'):
        to_rgb_image(photo.astype(np.float32))
    with pytest.raises(ValueError, match='NaN or infinite'):
        to_rgb_image(np.full((2, 2, 3), np.nan))
    with pytest.raises(ValueError, match='must be uint8 .* got int64'):
        to_rgb_image(photo.astype(np.int64) + 300)  # would wrap around
    with pytest.raises(ValueError, match='got uint16'):
        to_rgb_image(photo.astype(np.uint16))
    with pytest.raises(ValueError, match=r'\(H, W, 3\)'):
        to_rgb_image(np.zeros((2, 2, 2), np.uint8))


def test_alpha_only_mask_reads_as_drawn(tmp_path):
    # black everywhere, the shape drawn only in the alpha channel
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[2:5, 3:7, 3] = 255
    Image.fromarray(rgba).save(tmp_path / 'alpha.png')
    mask = load_mask(tmp_path / 'alpha.png')
    expected = np.zeros((8, 10), bool)
    expected[2:5, 3:7] = True
    assert np.array_equal(mask, expected)
    opaque = np.full((8, 10, 4), 255, np.uint8)  # fully opaque: the colour decides (white on black)
    opaque[..., :3] = 0
    opaque[2:5, 3:7, :3] = 255
    Image.fromarray(opaque).save(tmp_path / 'opaque.png')
    assert np.array_equal(load_mask(tmp_path / 'opaque.png'), expected)
    blue = np.zeros((8, 10, 3), np.uint8)
    blue[2:5, 3:7, 2] = 1  # a faint blue mask: any channel counts
    Image.fromarray(blue).save(tmp_path / 'blue.png')
    assert np.array_equal(load_mask(tmp_path / 'blue.png'), expected)


@pytest.mark.parametrize('size, message', [((1, 30000), 'side ratio of 30000:1'), ((0, 5), 'empty'),
                                           ((9000, 8000), 'MP, over the limit')])
def test_extreme_sizes_are_refused(size, message):
    with pytest.raises(ValueError, match=message):
        image_io.check_image_size(*size)


def test_extreme_files_are_refused_before_decoding(tmp_path):
    Image.new('L', (1, 30000)).save(tmp_path / 'line.png')
    with pytest.raises(ValueError, match=f'over the limit of {MAX_ASPECT_RATIO}:1'):
        load_image(tmp_path / 'line.png')
    (tmp_path / 'empty.png').write_bytes(b'')
    with pytest.raises(ValueError, match='an empty file'):
        load_image(tmp_path / 'empty.png')
    with pytest.raises(IsADirectoryError, match='is a directory'):
        load_image(tmp_path)


def _reference_preprocess(image: Image.Image, side_out: int) -> torch.Tensor:
    """The reference written directly: the full max(H, W) square, then the resize."""
    W, H = image.size
    side = max(H, W)
    canvas = Image.new('RGB', (side, side), PAD_COLOR)
    canvas.paste(image, ((side - W) // 2, (side - H) // 2))
    return torch.from_numpy(np.asarray(canvas.resize((side_out, side_out), Image.BICUBIC)).copy())


@pytest.mark.parametrize('H, W, S',
                         [(300, 451, 1024), (451, 300, 256), (127, 91, 64), (5, 97, 32),
                          (17, 9, 256),
                                     (1000, 20000, 512), (64, 64, 64), (799, 801, 256)])
def test_preprocessing_equals_the_full_square_reference(H, W, S):
    image = Image.fromarray(_rng_image(H, W, seed=H + W))
    pixels, geometry = preprocess_image(image, S)
    mean = torch.tensor(image_io.CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(image_io.CLIP_STD).view(3, 1, 1)
    levels = torch.round((pixels * std + mean) * 255).permute(1, 2, 0).to(torch.uint8)
    assert torch.equal(levels, _reference_preprocess(image, S))
    masks = torch.from_numpy(np.random.default_rng(1).random((2, H, W)) > 0.5)
    canvas = torch.zeros((2, geometry.side, geometry.side))
    top, left = geometry.offset
    canvas[:, top:top + H, left:left + W] = masks.float()
    expected = F.interpolate(canvas[:, None], size=(S, S), mode='nearest')[:, 0]
    assert torch.equal(geometry.masks_to_input(masks), expected)


def test_logits_beyond_the_exact_side_follow_the_full_interpolation(monkeypatch):
    geometry = SquareGeometry((300, 451), 1024)
    logits = torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(0))
    exact = geometry.logits_to_original(logits)
    square = F.interpolate(logits[:, None], size=(451, 451), mode='bilinear',
                           align_corners=False)[:, 0]
    assert torch.equal(exact, square[:, 75:375])
    monkeypatch.setattr(image_io, 'EXACT_OUTPUT_SIDE', 100)
    rows = geometry.logits_to_original(logits)
    assert rows.shape == (2, 300, 451) and torch.allclose(rows, exact, atol=1e-4)


MEMORY_SCRIPT = '''
import json, resource, sys
import numpy as np, torch
from PIL import Image
from omg_llava.inference.image_io import load_image, preprocess_image
image = load_image(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pixels, geometry = preprocess_image(image, 1024)
H, W = geometry.original_size
geometry.masks_to_input(torch.ones((1, H, W), dtype=torch.bool))
geometry.logits_to_original(torch.zeros((1, 256, 256)))
print(json.dumps({'added_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
'''


def test_memory_follows_the_input_size_not_the_square_of_the_long_side(tmp_path):
    # 400 x 8000: the full square would be 8000² (192 MB as RGB, 256 MB per float mask); bounded,
    # ~20 MB here
    Image.fromarray(np.full((8000, 400, 3), 90, np.uint8)).save(tmp_path / 'tall.png')
    done = subprocess.run([sys.executable, '-c', MEMORY_SCRIPT, str(tmp_path / 'tall.png')],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    added_mb = json.loads(done.stdout.strip().splitlines()[-1])['added_kb'] / 1024
    assert added_mb < 80, f'{added_mb:.0f} MB added while preprocessing a 400x8000 image'
