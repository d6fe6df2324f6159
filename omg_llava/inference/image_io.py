"""Image loading and the reference preprocessing (spec §1.1), with the inverse mapping for outputs.

Images are padded to a square with the CLIP-mean colour, the original centred, then resized
(bicubic) to the network input side and CLIP-normalised with the released configs' 4-decimal
statistics (:data:`~omg_llava.utils.constants.CLIP_MEAN` / ``CLIP_STD``). :class:`SquareGeometry`
records the padding so that prompts can be mapped in and masks mapped back out.

Images are read as a viewer shows them (:func:`load_image`, :func:`to_rgb_image`): the EXIF
orientation is applied, 16-bit and 32-bit grey levels are scaled to 8 bits, float arrays in [0, 1]
are scaled to 0-255, and any other array type is refused. Mask files (:func:`load_mask`) follow the
same orientation; a mask drawn only in the alpha channel is read from it. Memory is bounded by the
network input, not by the square of the long side: the padded square is never built at full size
(:func:`preprocess_image` pads only the rows or columns the resize reads;
:meth:`SquareGeometry.masks_to_input` / :meth:`~SquareGeometry.logits_to_original` index or
interpolate only the image's part of the square). Images beyond :data:`MAX_IMAGE_PIXELS` pixels or a
long-to-short side ratio of :data:`MAX_ASPECT_RATIO` are refused (:func:`check_image_size`): in a
1024-pixel input the short side of a 20:1 image is already only 51 pixels.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from omg_llava.utils.constants import CLIP_MEAN, CLIP_STD

PAD_COLOR = tuple(int(255 * m) for m in CLIP_MEAN)  # (122, 116, 104)
#: Largest image accepted (pixels): 64 MP, e.g. 8192 x 8192 (its RGB decode alone takes 200 MB).
MAX_IMAGE_PIXELS = 64 * 2 ** 20
#: Largest long-side / short-side ratio accepted.
MAX_ASPECT_RATIO = 20
#: Square side up to which :meth:`SquareGeometry.logits_to_original` interpolates the whole square
#: as the reference does (64 MB per mask); beyond it, only the image's rows and columns are
#: interpolated.
EXACT_OUTPUT_SIDE = 4096


def check_image_size(width: int, height: int, what: str = 'the image') -> None:
    """Raise ``ValueError`` for an empty image, one over :data:`MAX_IMAGE_PIXELS` pixels or one
    whose sides differ by more than :data:`MAX_ASPECT_RATIO` times."""
    if width < 1 or height < 1:
        raise ValueError(f'{what} is empty ({width}x{height} pixels)')
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f'{what} is {width}x{height} = {width * height / 1e6:.0f} MP, over the '
                         f'limit of {MAX_IMAGE_PIXELS / 1e6:.0f} MP: downscale it first (the model '
                         'sees it at 1024 pixels anyway)')
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f'{what} is {width}x{height}, a side ratio of {ratio:.0f}:1, over the '
                         f'limit of {MAX_ASPECT_RATIO}:1 (padded to a square its short side would '
                         'nearly vanish): crop it to the part you are asking about')


def _open(path: str | os.PathLike, what: str) -> Image.Image:
    """The image at ``path``, upright (EXIF orientation applied), its size checked before it is
    decoded."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f'{what} {path!r} is a directory, not an image file')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{what} not found: {path!r}')
    try:
        with Image.open(path) as image:
            # before decoding (a decompression bomb)
            check_image_size(*image.size, what=f'{what} {path!r}')
            return ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as exc:  # PIL's own limit, above ours: raised while opening
        raise ValueError(f'{what} {path!r} is over the limit of {MAX_IMAGE_PIXELS / 1e6:.0f} MP '
                         f'({exc})') from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        kind = 'an empty file' if os.path.getsize(path) == 0 else 'not an image PIL can read'
        raise ValueError(f'cannot read {path!r} as an image ({kind}: {exc}); give a PNG/JPEG/... '
                         'file') from exc


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB the way a viewer shows it (EXIF orientation, 16-bit grey scaled),
    with a clear error for missing, unreadable or oversized files (:func:`check_image_size`)."""
    return to_rgb_image(_open(path, 'image'))


def to_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    """A PIL image or an array as an 8-bit RGB PIL image.

    Arrays may be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha dropped) and either ``uint8`` or
    floating point with every value in [0, 1] (scaled by 255). PIL images in 16- or 32-bit grey
    (``I;16``, ``I``) are scaled to 8 bits by their bit depth (``I`` values within 0-255 are taken
    as 8-bit); ``F`` images follow the float rule.

    Raises:
        ValueError: another array type (e.g. ``int64`` or ``uint16``: convert it yourself, the
            intended range is ambiguous), a float array outside [0, 1] or not finite, another shape,
            or an image over the size limits.
    """
    if isinstance(image, Image.Image):
        if image.mode.startswith('I;16') or image.mode == 'I':
            grey = np.asarray(image).astype(np.int64)
            bits = 16 if image.mode.startswith('I;16') or grey.max(initial=0) > 255 else 8
            if bits == 16:
                grey = (grey.clip(0, 65535) * 255 + 32767) // 65535  # 65535 -> 255, exactly
            image = Image.fromarray(grey.clip(0, 255).astype(np.uint8))
        elif image.mode == 'F':
            image = _array_to_image(np.asarray(image))
        check_image_size(*image.size)
        return image.convert('RGB')
    return _array_to_image(np.asarray(image))


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[..., :3] if array.shape[2] != 1 else array[..., 0]
    if not (array.ndim == 2 or array.ndim == 3 and array.shape[2] == 3):
        raise ValueError('an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got '
                         f'shape {array.shape}')
    check_image_size(array.shape[1], array.shape[0])
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        low, high = ((float(array[finite].min()), float(array[finite].max())) if finite.any()
                     else (0.0, 0.0))
        if not finite.all() or low < 0 or high > 1:
            found = ('NaN or infinite values' if not finite.all()
                     else f'values in [{low:g}, {high:g}]')
            raise ValueError(f'a float image array must hold values in [0, 1], got {found}: scale '
                             '0-255 data to [0, 1] (or give uint8)')
        array = np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError('an image array must be uint8 (0-255) or float in [0, 1], got '
                         f'{array.dtype}: convert it '
                         '(e.g. array.astype(np.uint8) for 0-255 integers, array / 65535 for '
                         '16-bit data)')
    image = Image.fromarray(np.ascontiguousarray(array))
    return image.convert('RGB')


def load_mask(path: str | os.PathLike, what: str = 'mask') -> np.ndarray:
    """An (H, W) bool mask from an image file, in the orientation a viewer shows (EXIF applied).

    Non-zero is inside: any colour channel above 0, or for an image with transparency (some alpha
    below the maximum) the non-transparent pixels, so a mask drawn only in the alpha channel reads
    as drawn.
    """
    image = _open(path, what)
    if (image.mode in ('P', 'PA') or image.mode in ('LA', 'La', 'RGBa')
            or 'transparency' in image.info):
        image = image.convert('RGBA')
    if image.mode == 'RGBA':
        array = np.asarray(image)
        alpha = array[..., 3]
        if alpha.min() < 255:
            return alpha > 0
        return array[..., :3].max(axis=2) > 0
    if image.mode in ('1', 'L', 'F') or image.mode.startswith('I'):
        return np.asarray(image) > 0
    return np.asarray(image.convert('RGB')).max(axis=2) > 0


@dataclass(frozen=True)
class SquareGeometry:
    """Where the original image sits in the padded square network input.

    Attributes:
        original_size: (H, W) of the original image.
        input_side: side S of the network input.
    """

    original_size: tuple[int, int]
    input_side: int

    @property
    def side(self) -> int:
        """Side of the padded square before resizing: max(H, W)."""
        return max(self.original_size)

    @property
    def offset(self) -> tuple[int, int]:
        """(top, left) of the original inside the padded square: (max − min) // 2 on the short
        axis."""
        H, W = self.original_size
        return (W - H) // 2 if W > H else 0, (H - W) // 2 if H > W else 0

    @property
    def scale(self) -> float:
        return self.input_side / self.side

    def points_to_input(self, points_xy: Tensor) -> Tensor:
        """(N, 2) (x, y) original pixels → network-input pixels."""
        top, left = self.offset
        return (points_xy.float() + points_xy.new_tensor([left, top],
                                                         dtype=torch.float)) * self.scale

    def boxes_to_input(self, boxes: Tensor) -> Tensor:
        """(N, 4) (x1, y1, x2, y2) original pixels → network-input pixels (both corners shifted)."""
        return self.points_to_input(boxes.view(-1, 2)).view(-1, 4)

    def _nearest_sources(self) -> Tensor:
        """(S,) index into the padded square read by each input row (and column) under nearest
        resizing: PyTorch's ``mode='nearest'`` rule, floor(i * side / S) in float32."""
        scale = torch.tensor(self.side, dtype=torch.float32) / self.input_side
        index = torch.floor(torch.arange(self.input_side, dtype=torch.float32) * scale).long()
        return index.clamp(max=self.side - 1)

    def masks_to_input(self, masks: Tensor) -> Tensor:
        """(N, H, W) original-size binary masks → (N, S, S) float: zero-padded to the square, then
        nearest-resized (the square itself is never built: the image pixels each input pixel reads
        are gathered)."""
        H, W = self.original_size
        top, left = self.offset
        index = self._nearest_sources()
        rows, cols = index - top, index - left
        # contiguous runs (index is sorted)
        row_in, col_in = (rows >= 0) & (rows < H), (cols >= 0) & (cols < W)
        out = masks.new_zeros((masks.shape[0], self.input_side, self.input_side), dtype=torch.float)
        if row_in.any() and col_in.any():
            r = row_in.nonzero()[:, 0]
            c = col_in.nonzero()[:, 0]
            out[:, r[0]:r[-1] + 1, c[0]:c[-1] + 1] = masks[:, rows[r]][:, :, cols[c]].float()
        return out

    def logits_to_original(self, logits: Tensor) -> Tensor:
        """(N, h, w) mask logits on the square → (N, H, W) logits on the original image (spec
        §10.19): bilinear (``align_corners=False``) to max(H, W)², then the padding is cropped.

        Up to a square of :data:`EXACT_OUTPUT_SIDE` this is computed as written, one mask at a time;
        beyond it only the image's rows and columns of the square are interpolated (same sampling,
        float rounding apart: within 1e-4), so memory follows H x W, not max(H, W)².
        """
        H, W = self.original_size
        top, left = self.offset
        logits = logits.float()
        if self.side <= EXACT_OUTPUT_SIDE:
            out = logits.new_empty((logits.shape[0], H, W))
            for i, mask in enumerate(logits):
                square = F.interpolate(mask[None, None], size=(self.side, ) * 2, mode='bilinear',
                                       align_corners=False)
                out[i] = square[0, 0, top:top + H, left:left + W]
            return out
        r0, r1, rw0, rw1 = _linear_taps(logits.shape[-2], self.side, top, top + H)
        c0, c1, cw0, cw1 = _linear_taps(logits.shape[-1], self.side, left, left + W)
        columns = logits[:, :, c0] * cw0 + logits[:, :, c1] * cw1  # (N, h, W)
        out = logits.new_empty((logits.shape[0], H, W))
        for a in range(0, H, 1024):  # row blocks: no (N, H, W) temporaries
            b = min(H, a + 1024)
            out[:, a:b] = (
                columns[:, r0[a:b]] * rw0[a:b, None] + columns[:, r1[a:b]] * rw1[a:b, None]
            )
        return out


def _linear_taps(size_in: int, size_out: int, start: int,
                 stop: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source indices and weights ``(i0, i1, w0, w1)`` of output positions ``start..stop-1`` for a
    linear resize from ``size_in`` to ``size_out`` with ``align_corners=False`` (PyTorch's
    source-index rule)."""
    scale = torch.tensor(size_in, dtype=torch.float32) / size_out
    source = (scale * (torch.arange(start, stop, dtype=torch.float32) + 0.5) - 0.5).clamp(min=0)
    i0 = source.long().clamp(max=size_in - 1)
    weight = (source - i0.float()).clamp(0, 1)
    return i0, (i0 + 1).clamp(max=size_in - 1), 1 - weight, weight


def preprocess_image(image: Image.Image, input_side: int) -> tuple[Tensor, SquareGeometry]:
    """PIL RGB image → ((3, S, S) CLIP-normalised float32, geometry).

    The result is the reference's (pad to the max(H, W) square, bicubic resize to S), but the full
    square is never built: only the image plus the padding lines that the resize of its rows (or
    columns) reads are, and the lines that read padding alone are the padding colour. Memory is that
    of the image and the input, not max(H, W)².

    Raises:
        ValueError: an image over the size limits (:func:`check_image_size`).
    """
    W, H = image.size
    check_image_size(W, H)
    geometry = SquareGeometry((H, W), input_side)
    side, S = geometry.side, input_side
    wide = W >= H  # padding above and below (else left and right)
    length, offset = (H, geometry.offset[0]) if wide else (W, geometry.offset[1])
    ratio = side / S  # square pixels per input pixel
    support = 2.0 * max(ratio, 1.0)  # reach of the bicubic kernel, in square pixels
    # input lines reading some image pixel
    first = max(0, math.floor((offset - support) / ratio - 0.5) - 2)
    last = min(S, math.ceil((offset + length + support) / ratio - 0.5) + 2)
    lo = max(0, math.floor(first * ratio - support) - 2)  # square lines those input lines read
    hi = min(side, math.ceil(last * ratio + support) + 2)
    strip = Image.new('RGB', (side, hi - lo) if wide else (hi - lo, side), PAD_COLOR)
    strip.paste(image, (0, offset - lo) if wide else (offset - lo, 0))
    if wide:
        part = strip.resize((S, last - first), Image.BICUBIC,
                            box=(0, first * ratio - lo, side, last * ratio - lo))
    else:
        part = strip.resize((last - first, S), Image.BICUBIC,
                            box=(first * ratio - lo, 0, last * ratio - lo, side))
    canvas = Image.new('RGB', (S, S), PAD_COLOR)
    canvas.paste(part, (0, first) if wide else (first, 0))
    pixels = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (pixels - mean) / std, geometry
