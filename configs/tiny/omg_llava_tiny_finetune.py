# Tiny sibling of configs/omg_llava_7b_finetune_8gpus.py: same structure, random init, CPU-sized.
# Used by the tests and by the README demo when no released weights are present.
from omg_llava.models import ConvNeXtCLIPBackbone
from omg_llava.models import OMGSegHead
from omg_llava.models import OMGSegVisualEncoder

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
image_size = 256
pixel_shuffle_ratio = 2
num_queries = 20
omg_head_channels = 64

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
visual_encoder = dict(
    type=OMGSegVisualEncoder,
    backbone=dict(type=ConvNeXtCLIPBackbone, depths=(1, 1, 2, 1), dims=(32, 64, 128, 256), clip_embed_dim=32),
    panoptic_head=dict(
        type=OMGSegHead,
        in_channels=(32, 64, 128, 256),
        strides=(4, 8, 16, 32),
        feat_channels=omg_head_channels,
        num_queries=num_queries,
        num_things_classes=80,
        num_stuff_classes=53,
        num_synonyms=2,
        clip_embed_dim=32,
        num_heads=4,
        pixel_decoder_layers=1,
        pixel_decoder_ffn_channels=128,
        decoder_layers=3,
        decoder_ffn_channels=128,
        num_feature_levels=3),
    pixel_shuffle_ratio=pixel_shuffle_ratio,
    object_prior_smooth=0.5,
    frozen=True,
    weights=dict())
