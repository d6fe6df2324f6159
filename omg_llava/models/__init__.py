"""Model components; importing this package registers them in :data:`omg_llava.registry.MODELS` and
registers the first-party InternLM2 with transformers' Auto classes."""
from . import llm  # noqa: F401  (Auto-class registration of InternLM2)
from .auxiliary_losses import AuxiliaryLoss, ObjectTokenHintLoss, TextOnlyLMLoss
from .backbones import ConvNeXtCLIPBackbone
from .language_model_trainer import LanguageModelTrainer
from .omg_llava import EncodedImages, GenerationOutput, OMGLLaVA, SegQueries
from .omg_seg_encoder import OMGSegVisualEncoder, PromptOutput, VisualEncoderOutput
from .omg_seg_trainer import OMGSegTrainer
from .projectors import OMGVisualProjector, Text2VisionProjector
from .seg_heads import OMGSegHead
from .special_tokens import SpecialTokenIds
from .visual_prompts import VisualPrompt

__all__ = ['ConvNeXtCLIPBackbone', 'OMGSegHead', 'OMGSegVisualEncoder', 'VisualEncoderOutput',
           'PromptOutput',
           'OMGVisualProjector', 'Text2VisionProjector', 'OMGLLaVA', 'EncodedImages',
           'GenerationOutput',
           'SpecialTokenIds', 'VisualPrompt', 'OMGSegTrainer', 'LanguageModelTrainer', 'SegQueries',
           'AuxiliaryLoss', 'ObjectTokenHintLoss', 'TextOnlyLMLoss']
