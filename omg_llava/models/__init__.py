"""Model components; importing this package registers them in :data:`omg_llava.registry.MODELS`."""
from .backbones import ConvNeXtCLIPBackbone
from .projectors import OMGVisualProjector, Text2VisionProjector
from .omg_seg_encoder import OMGSegVisualEncoder, PromptOutput, VisualEncoderOutput
from .seg_heads import OMGSegHead

__all__ = ['ConvNeXtCLIPBackbone', 'OMGSegHead', 'OMGSegVisualEncoder', 'VisualEncoderOutput', 'PromptOutput',
           'OMGVisualProjector', 'Text2VisionProjector']
