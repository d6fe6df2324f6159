from .omg_projector import OMGVisualProjector, Text2VisionProjector

__all__ = ['OMGVisualProjector', 'Text2VisionProjector']
