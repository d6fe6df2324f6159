"""Evaluation protocols of spec §9.3: referring segmentation, grounded caption generation, region
captioning; plus closed region questions (``region_qa``) for the synthetic shapes.

``refseg`` / ``gcg`` / ``captions`` hold the metrics, ``splits`` reads the annotation files and
``runner`` the loops (``tools/test.py`` is the command line). Each task is scored under one of
``runner.PROTOCOLS``: ``reference`` (the released scripts' numbers) or ``corrected`` (the default).
See docs/evaluation.md.
"""
from .captions import caption_metrics, find_java
from .gcg import (GroundedImage, TransformerPhraseSimilarity, bag_of_words_cosine, gcg_mask_metrics,
                  greedy_pairs,
                  image_miou, image_true_positives, mask_ap, reference_image_miou,
                  reference_true_positives, token_jaccard)
from .refseg import (MaskOverlap, mask_overlap, reference_gt_mask, reference_refseg_metrics,
                     refseg_metrics)
from .runner import PROTOCOLS, ModelPredictor, evaluate, shard_range
from .splits import GCGSplit, RefSegSplit, RegionCaptionSplit, RegionQASplit, load_split

__all__ = ['caption_metrics', 'find_java', 'GroundedImage', 'TransformerPhraseSimilarity',
           'bag_of_words_cosine',
           'gcg_mask_metrics', 'greedy_pairs', 'image_miou', 'image_true_positives', 'mask_ap',
           'token_jaccard',
           'reference_image_miou', 'reference_true_positives', 'MaskOverlap', 'mask_overlap',
           'refseg_metrics',
           'reference_gt_mask', 'reference_refseg_metrics', 'PROTOCOLS', 'ModelPredictor',
           'evaluate', 'shard_range',
           'GCGSplit', 'RefSegSplit', 'RegionCaptionSplit', 'RegionQASplit', 'load_split']
