"""Registries of the plugin, children of mmengine's so that mmengine and xtuner builders find them.

Configs may name a component as an object (``type=OMGSegVisualEncoder``, the xtuner style, which
xtuner's ``BUILDER`` builds) or as a string: ``'OMGSegVisualEncoder'`` through these registries, or
``'omg_llava.OMGSegVisualEncoder'`` through mmengine's. Builds through these registries always run
in the ``omg_llava`` scope, so plain strings resolve whatever default scope a runner has set.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import DefaultScope, Registry, build_from_cfg

SCOPE = 'omg_llava'


def build_in_plugin_scope(cfg, registry, default_args=None):
    """``build_from_cfg`` with the default scope set to this plugin for the duration of the
    build."""
    with DefaultScope.overwrite_default_scope(SCOPE):
        return build_from_cfg(cfg, registry, default_args)


MODELS = Registry('model', parent=MMENGINE_MODELS, scope=SCOPE, locations=['omg_llava.models'],
                  build_func=build_in_plugin_scope)
LOOPS = Registry('loop', parent=MMENGINE_LOOPS, scope=SCOPE, locations=['omg_llava.engine'],
                 build_func=build_in_plugin_scope)
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope=SCOPE, locations=['omg_llava.engine.hooks'],
                 build_func=build_in_plugin_scope)
RUNNERS = Registry('runner', parent=MMENGINE_RUNNERS, scope=SCOPE, locations=['omg_llava.engine'])



def build_component(cfg):
    """Build a config entry the way xtuner configs write them.

    A module or any non-dict is returned as is. A dict whose ``type`` is callable (a class or a
    factory such as ``AutoModelForCausalLM.from_pretrained``) is called with the other keys, after
    building nested dicts that have a callable ``type`` too (e.g.
    ``quantization_config=dict(type=BitsAndBytesConfig, ...)``). A dict whose ``type`` is a string
    goes through :data:`MODELS`.
    """
    if not isinstance(cfg, dict) or 'type' not in cfg:
        return cfg
    kwargs = {k: v for k, v in cfg.items() if k != 'type'}
    factory = cfg['type']
    if not callable(factory):
        return MODELS.build(cfg)
    kwargs = {k: build_component(v) if isinstance(v, dict) and callable(v.get('type')) else v
              for k, v in kwargs.items()}
    return factory(**kwargs)


__all__ = ['MODELS', 'LOOPS', 'HOOKS', 'RUNNERS', 'SCOPE', 'build_component']
