from .omg_seg_head import DecodeOutput, ImageFeatures, OMGSegHead

__all__ = ['OMGSegHead', 'ImageFeatures', 'DecodeOutput']
