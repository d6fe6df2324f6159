"""A full-size benchmark that needs no download: random-weight bundles in the released files' layout
(:mod:`~omg_llava.benchmark.bundle`), written tensor by tensor
(:mod:`~omg_llava.benchmark.writers`)."""
from .bundle import BundlePaths, write_bundle
from .presets import PRESETS, BundlePreset

__all__ = ['BundlePaths', 'BundlePreset', 'PRESETS', 'write_bundle']
