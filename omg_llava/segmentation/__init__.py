"""OMG-Seg as a universal segmenter without the LLM: your own vocabulary (CLIP text tower), panoptic
/ instance / semantic maps, interactive point and box prompts, and video
(docs/universal_segmentation.md)."""
from .text_tower import CLIPTextEncoder, load_clip_tokenizer, load_text_tower, write_tokenizer_files
from .vocabulary import (COCO_PANOPTIC_VOCABULARY, TEMPLATES, Vocabulary, coco_panoptic_vocabulary,
                         compare_class_embeddings, embed_vocabulary, parse_vocabulary,
                         split_synonyms)

__all__ = ['CLIPTextEncoder', 'load_clip_tokenizer', 'load_text_tower', 'write_tokenizer_files',
           'TEMPLATES',
           'Vocabulary', 'COCO_PANOPTIC_VOCABULARY', 'coco_panoptic_vocabulary',
           'compare_class_embeddings', 'embed_vocabulary', 'parse_vocabulary', 'split_synonyms']
