"""Time and size each universal-segmentation mode of a bundle's visual encoder (OMG-Seg alone, no
LLM).

One mode per process, so that each peak RSS is the mode's own. Stages: ``build`` (the encoder with
its three files, :func:`~omg_llava.segmentation.builder.build_segmenter`), ``encode`` (trunk, pixel
decoder and the 300 object queries of one image; for ``video`` the whole clip with its linking) and
``post`` (the task on top: panoptic fusion, semantic map, instance selection, prompt decoding, or
per-frame panoptic output for video). The input is a random RGB image of ``side``×``side`` pixels
(1024: no resizing at the released input size).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from .bundle import BundlePaths
from .runner import Stage, stage_recorder

SEGMENTATION_TASKS = ('panoptic', 'semantic', 'instance', 'interactive', 'video')
#: prompts of the interactive mode, in pixels of a 1024² image (scaled to other sides)
POINTS = ((100.0, 120.0), (512.0, 512.0), (900.0, 300.0), (300.0, 850.0))
BOXES = ((200.0, 200.0, 600.0, 700.0), )


def run_segmentation_benchmark(bundle: str, task: str, *, side: int = 1024, frames: int = 3,
                               device: str = 'cpu', seed: int = 0,
                               log: Callable[[str], None] = print) -> dict:
    """Measure ``task`` (one of :data:`SEGMENTATION_TASKS`) on the bundle's encoder; returns the
    JSON record (``stages`` with seconds, peak RSS and RSS after each, and what the task
    produced)."""
    if task not in SEGMENTATION_TASKS:
        raise ValueError(f'task must be one of {SEGMENTATION_TASKS}, got {task!r}')
    from omg_llava.segmentation.builder import build_segmenter
    from omg_llava.segmentation.video import frame_panoptic, track_video
    paths = BundlePaths.under(bundle)
    stages: list[Stage] = []
    stage = stage_recorder(stages, log)

    start = time.perf_counter()
    segmenter, notes = build_segmenter(paths.config, omg_seg=paths.omg_seg, clip=paths.clip,
                                       class_embed=paths.class_embed, device=device, seed=seed,
                                       input_side=side)
    stage('build', time.perf_counter() - start, notes=notes)
    rng = np.random.default_rng(seed)
    images = [(rng.random((side, side, 3)) * 255).astype(np.uint8)
              for _ in range(frames if task == 'video'
                                                                                    else 1)]
    scale = side / 1024
    with torch.no_grad():
        start = time.perf_counter()
        output = track_video(segmenter, images) if task == 'video' else segmenter.encode(images[0])
        stage('encode', time.perf_counter() - start, frames=len(images))
        start = time.perf_counter()
        if task == 'panoptic':
            result = dict(segments=len(segmenter.panoptic(output).segments))
        elif task == 'semantic':
            result = dict(classes=int(segmenter.semantic(output).unique().numel()))
        elif task == 'instance':
            result = dict(instances=len(segmenter.instance(output).scores))
        elif task == 'interactive':
            masks = segmenter.interactive(output,
                                          points=[(x * scale, y * scale) for x, y in POINTS],
                                          boxes=[tuple(v * scale for v in box) for box in BOXES])
            result = dict(masks=int(masks.shape[0]))
        else:
            result = dict(segments_per_frame=[len(frame_panoptic(segmenter, output, i).segments)
                                              for i in range(len(images))])
        stage('post', time.perf_counter() - start, **result)
    return dict(bundle=paths.root, task=task, side=side, device=device,
                threads=torch.get_num_threads(),
                parameters=sum(p.numel() for p in segmenter.encoder.parameters()),
                stages=[s.flat() for s in stages])
