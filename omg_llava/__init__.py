"""OMG-LLaVA: an mmengine/xtuner plugin for pixel-grounded chat with the released OMG-LLaVA
weights."""

__version__ = '0.1.0'
