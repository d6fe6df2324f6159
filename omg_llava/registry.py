"""Registries of the plugin, children of mmengine's so that mmengine, mmdet and xtuner builders find them.

Configs may name a component as an object (``type=OMGSegVisualEncoder``) or as a string
(``type='OMGSegVisualEncoder'``); both resolve through :data:`MODELS`. xtuner's ``BUILDER`` is
mmengine's ``MODELS`` registry, so xtuner builds these components too.
"""
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='omg_llava', locations=['omg_llava.models'])
LOOPS = Registry('loop', parent=MMENGINE_LOOPS, scope='omg_llava', locations=['omg_llava.engine'])

__all__ = ['MODELS', 'LOOPS']
