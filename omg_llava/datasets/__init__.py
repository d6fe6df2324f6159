"""Training data: one dataset class per source (spec §8.3), all producing
:class:`~omg_llava.datasets.sample.GroundedConversation` and sharing the encoding, collate and sampler."""
from .base import OMGDatasetBase
from .collate import omg_llava_collate_fn
from .combine import CombinedDataset
from .encoding import encode_sample
from .sample import GroundedConversation, MalformedSample
from .samplers import LengthGroupedSampler

__all__ = ['OMGDatasetBase', 'omg_llava_collate_fn', 'CombinedDataset', 'encode_sample', 'GroundedConversation',
           'MalformedSample', 'LengthGroupedSampler']
