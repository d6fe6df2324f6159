"""Write a pre-trained OMG-Seg encoder in the released file formats when its training ends.

The tiny OMG-Seg pre-stage (:class:`~omg_llava.models.omg_seg_trainer.OMGSegTrainer`, e.g.
``configs/tiny/synthetic/omg_seg_tiny_synthetic.py``) ends with three files in ``<work_dir>/`` (or ``out_dir``)
that an OMG-LLaVA config names in ``visual_encoder.weights``:

* ``omg_seg.pth``: ``{'state_dict': {'panoptic_head.*': ...}}``, the ``omg_seg_convl.pth`` layout;
* ``clip_trunk.safetensors``: the ConvNeXt trunk under open_clip names (``visual.trunk.*``, ``visual.head.*``);
* ``class_embed.pth``: the bare (K, synonyms, clip_dim) class-embedding tensor.
"""
from __future__ import annotations

import os

from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from omg_llava.registry import HOOKS

from ..utils import unwrap_model

ENCODER_FILES = dict(omg_seg='omg_seg.pth', clip='clip_trunk.safetensors', class_embed='class_embed.pth')


@HOOKS.register_module()
class ExportOMGSegHook(Hook):
    """After training, save the trained encoder as the three files of :data:`ENCODER_FILES`.

    Args:
        out_dir: destination folder; default the runner's ``work_dir``.
    """

    priority = 'LOW'

    def __init__(self, out_dir: str | None = None) -> None:
        self.out_dir = out_dir

    def after_train(self, runner) -> None:
        if not is_main_process():
            return
        model = unwrap_model(runner.model)
        if not hasattr(model, 'save_encoder'):
            raise TypeError(f'ExportOMGSegHook needs an OMGSegTrainer model, got {type(model).__name__}')
        out_dir = self.out_dir or runner.work_dir
        os.makedirs(out_dir, exist_ok=True)
        paths = {k: os.path.join(out_dir, name) for k, name in ENCODER_FILES.items()}
        model.save_encoder(paths['omg_seg'], paths['clip'])
        model.save_class_embeddings(paths['class_embed'])
        runner.logger.info('OMG-Seg encoder written: ' + ', '.join(paths.values()))
