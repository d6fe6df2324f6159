"""Image trunks; importing this package registers them in :data:`omg_llava.registry.MODELS`."""
from .convnext_clip import OPEN_CLIP_RENAMES, ConvNeXtCLIPBackbone, load_open_clip_weights

__all__ = ['ConvNeXtCLIPBackbone', 'OPEN_CLIP_RENAMES', 'load_open_clip_weights']
