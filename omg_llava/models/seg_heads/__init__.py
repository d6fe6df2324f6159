from .omg_seg_head import DecodeOutput, ImageFeatures, OMGSegHead
from .set_criterion import SegmentationSetCriterion

__all__ = ['OMGSegHead', 'ImageFeatures', 'DecodeOutput', 'SegmentationSetCriterion']
