"""Training data: one dataset class per source (spec §8.3), all producing
:class:`~omg_llava.datasets.sample.GroundedConversation` and sharing the encoding, collate and
sampler."""
from .base import OMGDatasetBase
from .collate import omg_llava_collate_fn
from .coco_instances import CocoInstanceDataset, instance_collate_fn
from .combine import CombinedDataset
from .encoding import encode_sample
from .gcg import FlickrGCGDataset, GranDfGCGDataset, OpenPsgGCGDataset, RefCOCOgGCGDataset
from .llava import LLaVADataset
from .mdpv import MDPVPointDataset
from .osprey import OspreyRegionCaptionDataset, OspreyRegionConversationDataset
from .prompt_conversation import PromptConversationDataset
from .refer_seg import ReferSegDataset
from .sample import GroundedConversation, MalformedSample
from .samplers import LengthGroupedSampler
from .semantic_seg import SemanticSegDataset

__all__ = ['OMGDatasetBase', 'omg_llava_collate_fn', 'CombinedDataset', 'encode_sample',
           'GroundedConversation', 'MalformedSample', 'LengthGroupedSampler', 'LLaVADataset',
           'ReferSegDataset', 'SemanticSegDataset', 'GranDfGCGDataset', 'OpenPsgGCGDataset',
           'RefCOCOgGCGDataset', 'FlickrGCGDataset', 'OspreyRegionCaptionDataset',
           'OspreyRegionConversationDataset', 'MDPVPointDataset', 'PromptConversationDataset',
           'CocoInstanceDataset', 'instance_collate_fn']
