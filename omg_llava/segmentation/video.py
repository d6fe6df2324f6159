"""Video segmentation with OMG-Seg alone: clips as tubes, clips linked by query matching (OMG-Seg
spec §5).

Within a clip of T frames the trunk and pixel decoder run per frame; the decoder sees the T frames
stacked along the height with 3-D sine key positions (``OMGSegHead.decode(num_frames=T)``), so each
of the Q object queries is a tube with one class over the clip. Clips are linked MinVIS-style: the
queries of each clip are permuted to the previous clip's order by Hungarian matching of ``1 - cos``
between their last-layer features (no threshold: every query slot is a track). Class logits are
averaged over the clips, masks concatenated in time, and each frame is fused (panoptic / instance)
with the video's logits and its own masks, so a track keeps its id (query slot + 1) and class in
every frame.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from omg_llava.inference.image_io import SquareGeometry
from omg_llava.models.seg_heads.omg_seg_head import ImageFeatures

from .fusion import InstanceOutput, PanopticOutput
from .segmenter import UniversalSegmenter

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def split_clips(num_frames: int, clip_size: int) -> list[tuple[int, int]]:
    """(start, end) of consecutive clips of ``clip_size`` frames; when ``num_frames`` is not a
    multiple, the last clips are one frame shorter each (MinVIS ``video_split``: 7 frames, size 3 →
    3, 2, 2)."""
    if clip_size < 1 or num_frames < 1:
        raise ValueError(f'need at least one frame and clip_size >= 1, got {num_frames} frames, '
                         f'clip_size {clip_size}')
    count = -(-num_frames // clip_size)
    base, longer = divmod(num_frames, count)  # the first `longer` clips keep one more frame
    sizes = [base + 1] * longer + [base] * (count - longer)
    ends = np.cumsum(sizes).tolist()
    return [(end - size, end) for end, size in zip(ends, sizes)]


def match_queries(previous: Tensor, current: Tensor) -> Tensor:
    """Permutation ``p`` (Q,) with ``current[p]`` aligned to ``previous`` (Q, C): Hungarian on 1 −
    cosine."""
    # (Q_prev, Q_cur)
    cost = 1 - F.normalize(previous.float(), dim=-1) @ F.normalize(current.float(), dim=-1).T
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    order = torch.empty(len(rows), dtype=torch.long)
    order[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return order


@dataclass
class VideoOutput:
    """Tracks of a video.

    Attributes:
        class_logits: (Q, K+1) per track, averaged over the clips.
        mask_logits: per frame, (Q, S/4, S/4) on the square input, query slot = track.
        geometry: the frames' geometry (all frames share a size).
        clips: (start, end) of each clip.
    """

    class_logits: Tensor
    mask_logits: list[Tensor]
    geometry: SquareGeometry
    clips: list[tuple[int, int]]


def stack_frames(features: ImageFeatures) -> ImageFeatures:
    """Per-frame features (T rows) → one row with the frames stacked along the height (frame-major
    tokens)."""

    def stacked(x: Tensor) -> Tensor:  # (T, C, h, w) → (1, C, T*h, w)
        T, C, h, w = x.shape
        return x.permute(1, 0, 2, 3).reshape(1, C, T * h, w)

    return ImageFeatures(stacked(features.mask_features), [stacked(m) for m in features.memories],
                         features.image_size)


@torch.no_grad()
def segment_clip(segmenter: UniversalSegmenter,
                 frames: Sequence) -> tuple[Tensor, Tensor, Tensor, SquareGeometry]:
    """One clip of T frames → class logits (Q, K+1), mask logits (Q, T, S/4, S/4), query features
    (Q, C)."""
    features, geometry = segmenter.encode_frames(frames)
    T = len(frames)
    decode = segmenter.encoder.panoptic_head.decode_object_queries(stack_frames(features),
                                                                   num_frames=T, keep_steps=False)
    masks = decode.mask_logits[-1][0]  # (Q, T*h, w)
    masks = masks.view(masks.shape[0], T, masks.shape[1] // T, masks.shape[2])
    return decode.class_logits[-1][0, :, :-1], masks, decode.queries[-1][0], geometry


@torch.no_grad()
def track_video(segmenter: UniversalSegmenter, frames: Sequence, clip_size: int = 3,
                progress: Iterable | None = None) -> VideoOutput:
    """Segment a whole video clip by clip and link the clips (module docstring).

    Args:
        segmenter: the segmenter (vocabulary set).
        frames: (H, W, 3) uint8 arrays or PIL images, all the same size.
        clip_size: frames per clip (the OMG-Seg video demo uses 3).
        progress: optional wrapper for the clip loop (e.g. ``tqdm``).
    """
    clips = split_clips(len(frames), clip_size)
    logits, masks, previous, geometry = [], [], None, None
    for start, end in (progress(clips) if progress else clips):
        cls, clip_masks, queries, geometry = segment_clip(segmenter, frames[start:end])
        if previous is not None:
            order = match_queries(previous, queries).to(cls.device)
            cls, clip_masks, queries = cls[order], clip_masks[order], queries[order]
        previous = queries
        logits.append(cls)
        masks.extend(clip_masks.unbind(1))
    return VideoOutput(torch.stack(logits).mean(0), masks, geometry, clips)


def frame_panoptic(segmenter: UniversalSegmenter, video: VideoOutput, index: int,
                   **kwargs) -> PanopticOutput:
    """Panoptic output of frame ``index`` with the video's class logits (queries are track ids −
    1)."""
    return segmenter.panoptic(_frame_output(video, index), **kwargs)


def frame_instances(segmenter: UniversalSegmenter, video: VideoOutput, index: int,
                    **kwargs) -> InstanceOutput:
    """Instances of frame ``index``; the same (track, class) pairs in every frame, masks per
    frame."""
    return segmenter.instance(_frame_output(video, index), **kwargs)


def _frame_output(video: VideoOutput, index: int):
    from .segmenter import ImageOutput
    return ImageOutput(video.geometry, None, video.class_logits, video.mask_logits[index], None)


def read_frames(path: str | os.PathLike, max_frames: int | None = None,
                stride: int = 1) -> list[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of a folder of images (sorted by name) or a video file
    (OpenCV)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise ValueError(f'{path!r} holds no image ({", ".join(IMAGE_SUFFIXES)}); give a '
                             'folder of frames or a video file')
        names = names[::stride][:max_frames]
        return [np.asarray(Image.open(os.path.join(path, n)).convert('RGB')) for n in names]
    if not os.path.isfile(path):
        raise FileNotFoundError(f'video not found: {path!r}')
    import cv2
    capture = cv2.VideoCapture(path)
    frames, index = [], 0
    while max_frames is None or len(frames) < max_frames:
        ok, frame = capture.read()
        if not ok:
            break
        if index % stride == 0:
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        index += 1
    capture.release()
    if not frames:
        raise ValueError(f'cannot read frames from {path!r}; give a folder of frames or a video '
                         'OpenCV can decode')
    return frames
