"""What the Gradio demo draws: mask colours chosen against the pixels under them, overlays with
outlines, answers as HTML whose phrases share their mask's colour, and the numbered prompt view.

Colours. Mask k takes the palette colour that differs most (CIE76 ΔE in Lab) from the pixels it
covers and is rare in the image, among the colours not taken by masks 0 … k-1, so a mask on an
orange object is not painted orange. The mask is blended at 60 % opacity and outlined in the solid
colour; the phrase before its ``[SEG]`` is highlighted with exactly that colour (black or white
text, whichever reads better on it).
"""
from __future__ import annotations

import colorsys
import html
import re
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]


def _palette(n: int) -> tuple[RGB, ...]:
    """``n`` saturated colours with evenly spaced hues."""
    colours = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb(i / n, 0.9, 0.95)
        colours.append((round(255 * r), round(255 * g), round(255 * b)))
    return tuple(colours)


PALETTE = _palette(12)  # candidate mask colours; with more masks than colours they are reused
MARK_COLOUR, REGION_COLOUR = (255, 221, 0), (0, 200, 255)

_ANSWER_PARTS = re.compile(r'<p>(.*?)</p>|\s*\[SEG\]', re.S)
_STRAY_TAGS = re.compile(r'<\|im_end\|>|</s>|</?p>')
_MAX_SAMPLES = 4096  # pixels of a mask compared with each candidate colour


# ------------------------------------------------------------------------------------------ colours
def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in [0, 255] → (..., 3) CIE Lab (D65)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                             [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], -1)


def _sample_lab(pixels: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 pixels → Lab of at most :data:`_MAX_SAMPLES` of them, evenly spaced."""
    if len(pixels) > _MAX_SAMPLES:
        pixels = pixels[np.linspace(0, len(pixels) - 1, _MAX_SAMPLES).astype(int)]
    return rgb_to_lab(pixels)


def _delta(lab: np.ndarray, colour: Sequence[int], percentile: float) -> float:
    if not len(lab):
        return 0.0
    return float(np.percentile(np.linalg.norm(lab - rgb_to_lab(np.asarray(colour)), axis=-1),
                               percentile))


def mask_contrast(image: np.ndarray, mask: np.ndarray, colour: Sequence[int]) -> float:
    """How well ``colour`` stands out on the masked pixels: the 10th percentile of ΔE (CIE76)
    between the colour and the pixels of the (H, W) bool ``mask`` on the (H, W, 3) uint8 ``image``;
    0 for an empty mask."""
    return _delta(_sample_lab(image[mask]), colour, 10)


def pick_mask_colours(image: np.ndarray, masks: Sequence[np.ndarray]) -> list[RGB]:
    """One colour per mask (see the module docstring): the unused :data:`PALETTE` colour of highest
    :func:`mask_contrast` plus the 2nd percentile of its ΔE to the whole image (so that among
    colours that stand out on the mask, one that is rare in the image wins: a mask is not mistaken
    for another object of its colour); ties go to the earlier palette entry."""
    image_lab = _sample_lab(image.reshape(-1, 3))
    rarity = {c: _delta(image_lab, c, 2) for c in PALETTE}
    colours: list[RGB] = []
    for mask in masks:
        # this round through the palette
        taken = set(colours[len(colours) - len(colours) % len(PALETTE):])
        free = [c for c in PALETTE if c not in taken]
        mask_lab = _sample_lab(image[np.asarray(mask, bool)])
        scores = [_delta(mask_lab, c, 10) + rarity[c] for c in free]
        colours.append(free[int(np.argmax(scores))])
    return colours


def text_colour(background: Sequence[int]) -> RGB:
    """Black or white, whichever contrasts more with ``background`` (WCAG relative luminance)."""
    c = np.asarray(background, dtype=np.float64) / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    luminance = float(linear @ np.array([0.2126, 0.7152, 0.0722]))
    return (0, 0, 0) if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else (255, 255, 255)


def _css(rgb: Sequence[int]) -> str:
    return f'rgb({rgb[0]}, {rgb[1]}, {rgb[2]})'


# -------------------------------------------------------------------------------------------- masks
def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """(H, W) bool: the mask pixels within ``width`` pixels (4-neighbourhood steps) of its
    border."""
    inner = mask.copy()
    for _ in range(width):
        padded = np.pad(inner, 1)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def overlay_masks(image: np.ndarray, masks: Sequence[np.ndarray],
                  colours: Sequence[RGB] | None = None, alpha: float = 0.6) -> np.ndarray:
    """Mask i blended at ``alpha`` in ``colours[i]`` over the (H, W, 3) uint8 image and outlined in
    the solid colour (about 1/150 of the image side, at least 2 pixels). Default colours:
    :func:`pick_mask_colours`."""
    colours = pick_mask_colours(image, masks) if colours is None else colours
    out = image.astype(np.float32)  # (H, W, 3)
    width = max(2, round(max(image.shape[:2]) / 150))
    for mask, colour in zip(masks, colours):
        mask = np.asarray(mask, bool)
        rgb = np.asarray(colour, dtype=np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * rgb
        out[mask_outline(mask, width)] = rgb
    return out.round().clip(0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- HTML
def colour_chip(colour: Sequence[int], text: str) -> str:
    """``text`` (escaped) on a ``colour`` background: how a phrase or a mask label is shown."""
    return (f'<span class="omg-phrase" style="background-color: {_css(colour)}; color: '
            f'{_css(text_colour(colour))}; padding: 0 3px; border-radius: '
            f'3px">{html.escape(text)}</span>')


def answer_to_html(text: str, colours: Sequence[RGB] = ()) -> str:
    """Answer markup → HTML: ``[SEG]`` removed, each ``<p>…</p>`` phrase highlighted in its mask's
    colour.

    A phrase takes the colour of the first ``[SEG]`` after it when no other phrase comes first (the
    ``<p> cat </p> [SEG]`` pattern of grounded answers); ``colours[k]`` is the colour of the k-th
    ``[SEG]`` (default :data:`PALETTE` in order). A phrase without its own ``[SEG]`` is bold only.
    """
    parts: list[tuple[str, str]] = []  # (kind, text) with kind 'text', 'phrase' or 'seg'
    pos = 0
    for match in _ANSWER_PARTS.finditer(text):
        parts.append(('text', text[pos:match.start()]))
        parts.append(('phrase', match.group(1).strip()) if match.group(1) is not None
                     else ('seg', ''))
        pos = match.end()
    parts.append(('text', text[pos:]))
    seg_ordinal = {i: n
                   for n, i in enumerate(i for i, (kind, _) in enumerate(parts) if kind == 'seg')}
    out = []
    for i, (kind, value) in enumerate(parts):
        if kind == 'text':
            out.append(html.escape(_STRAY_TAGS.sub('', value)).replace('\n', '<br>'))
        elif kind == 'phrase':
            following = next((j for j in range(i + 1, len(parts)) if parts[j][0] != 'text'), None)
            if following is not None and parts[following][0] == 'seg':
                k = seg_ordinal[following]
                colour = colours[k] if k < len(colours) else PALETTE[k % len(PALETTE)]
                out.append(colour_chip(colour, value).replace('class="omg-phrase"',
                                                               'class="omg-phrase" '
                                                               f'data-mask="{k}"'))
            else:
                out.append(f'<b class="omg-phrase">{html.escape(value)}</b>')
    return f'<div class="omg-answer" style="line-height: 1.6">{"".join(out).strip()}</div>'


def error_html(message: str) -> str:
    """An error shown in the answer panel."""
    return ('<div class="omg-error" style="color: #b00020; border: 1px solid #b00020; padding: '
            f'6px; border-radius: 4px"><b>Cannot answer:</b> {html.escape(message)}</div>')


def masks_html(labels: Sequence[str], colours: Sequence[RGB], masks: Sequence[np.ndarray]) -> str:
    """The answer panel of interactive segmentation: one chip per mask with its prompt and area."""
    rows = []
    for label, colour, mask in zip(labels, colours, masks):
        area = int(np.count_nonzero(mask))
        share = 100.0 * area / max(1, np.asarray(mask).size)
        rows.append(f'{colour_chip(colour, label)} {area} pixels ({share:.1f}% of the image)')
    return ('<div class="omg-answer omg-segment" style="line-height: 1.8"><b>OMG-Seg masks</b> (no '
            f'question asked):<br>{"<br>".join(rows)}</div>')


# ------------------------------------------------------------------------------------------ prompts
def draw_prompts(image: np.ndarray, points: Sequence[Sequence[float]],
                 boxes: Sequence[Sequence[float]],
                 pending_corner: Sequence[float] | None = None) -> np.ndarray:
    """The image with numbered points (``<mark>`` k), boxes (``<region>`` k) and a pending box
    corner, each drawn over a black edge so it shows on any colour."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 300))
    font = ImageFont.load_default(size=max(10, 6 * width))
    for k, (x1, y1, x2, y2) in enumerate(boxes, 1):
        draw.rectangle((x1 - width, y1 - width, x2 + width, y2 + width), outline=(0, 0, 0),
                       width=3 * width)
        draw.rectangle((x1, y1, x2, y2), outline=REGION_COLOUR, width=width)
        draw.text((x1 + 2 * width, y1 + width), f'region {k}', fill=REGION_COLOUR, font=font,
                  stroke_width=1, stroke_fill=(0, 0, 0))
    for k, (x, y) in enumerate(points, 1):
        r = 3 * width
        draw.ellipse((x - r, y - r, x + r, y + r), fill=MARK_COLOUR, outline=(0, 0, 0),
                     width=max(1, width // 2))
        draw.text((x + r + 2, y - r), f'mark {k}', fill=MARK_COLOUR, font=font, stroke_width=1,
                  stroke_fill=(0, 0, 0))
    if pending_corner is not None:
        x, y = pending_corner
        r = 4 * width
        for colour, w in (((0, 0, 0), 3 * width), (REGION_COLOUR, width)):
            draw.line((x - r, y, x + r, y), fill=colour, width=w)
            draw.line((x, y - r, x, y + r), fill=colour, width=w)
    return np.asarray(canvas)
