"""Write what the next training stage loads when a stage's training ends.

The tiny synthetic recipe (``projects/tiny_omg_llava/train_tiny.py``) trains parts that the released
model gets from elsewhere; each such stage's model has an ``export(out_dir)`` method and this hook
calls it:

* :class:`~omg_llava.models.OMGSegTrainer` (OMG-Seg pre-stage): ``omg_seg.pth``,
  ``clip_trunk.safetensors``, ``class_embed.pth`` in the released formats
  (:data:`~omg_llava.models.omg_seg_trainer.ENCODER_FILES`), the files an OMG-LLaVA config names in
  ``visual_encoder.weights``;
* :class:`~omg_llava.models.LanguageModelTrainer` (language stage): the LLM as a Hugging Face folder
  ``llm/``, what an OMG-LLaVA config names in ``llm.pretrained_model_name_or_path``.
"""
from __future__ import annotations

from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from omg_llava.registry import HOOKS

from ..utils import unwrap_model


@HOOKS.register_module()
class ExportStageOutputHook(Hook):
    """After training, call ``model.export(out_dir)`` and log the written paths.

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
        if not hasattr(model, 'export'):
            raise TypeError('ExportStageOutputHook needs a model with an export(out_dir) method '
                            f'(OMGSegTrainer, LanguageModelTrainer), got {type(model).__name__}')
        paths = model.export(self.out_dir or runner.work_dir)
        runner.logger.info(f'{type(model).__name__} wrote: ' + ', '.join(paths))
