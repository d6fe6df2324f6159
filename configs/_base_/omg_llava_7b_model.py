# Copyright (c) omg-llava contributors. The OMG-LLaVA 7B model shared by the pretrain and finetune
# configs: InternLM2-chat-7B (4-bit NF4, fp16 compute) + the frozen OMG-Seg ConvNeXt-L visual
# encoder.
import torch
from peft import LoraConfig  # noqa: F401 (used by the configs that read this base)
from transformers import AutoModelForCausalLM
from transformers import AutoTokenizer
from transformers import BitsAndBytesConfig

from omg_llava.models import ConvNeXtCLIPBackbone
from omg_llava.models import OMGLLaVA
from omg_llava.models import OMGSegHead
from omg_llava.models import OMGSegVisualEncoder

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model files (docs/model_zoo.md says where each comes from)
pretrained_dir = './pretrained/omg_llava/'
llm_name_or_path = pretrained_dir + 'internlm2-chat-7b'
omg_head_pretrain_pth_path = pretrained_dir + 'omg_seg_convl.pth'
omg_ov_class_embed_path = pretrained_dir + 'convnext_large_d_320_CocoPanopticOVDataset.pth'
# The CLIP trunk is in no OMG file: the open_clip checkpoint of
# laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup (open_clip_pytorch_model.bin or
# .safetensors).
clip_pretrain_path = (
    pretrained_dir + 'convnext_large_d_320_laion2b_s29b_b131k_ft_soup/open_clip_pytorch_model.bin'
)

# Visual encoder
image_size = 1024
pixel_shuffle_ratio = 2
num_queries = 300
omg_head_channels = 256

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(
    type=AutoTokenizer.from_pretrained,
    pretrained_model_name_or_path=llm_name_or_path,
    padding_side='right')

visual_encoder = dict(
    type=OMGSegVisualEncoder,
    backbone=dict(
        type=ConvNeXtCLIPBackbone,
        depths=(3, 3, 27, 3),
        dims=(192, 384, 768, 1536),
        clip_embed_dim=768),
    panoptic_head=dict(
        type=OMGSegHead,
        in_channels=(192, 384, 768, 1536),
        strides=(4, 8, 16, 32),
        feat_channels=omg_head_channels,
        num_queries=num_queries,
        num_things_classes=80,
        num_stuff_classes=53,
        num_synonyms=17,
        clip_embed_dim=768,
        num_heads=8,
        pixel_decoder_layers=6,
        pixel_decoder_ffn_channels=1024,
        decoder_layers=9,
        decoder_ffn_channels=2048,
        num_feature_levels=3,
        logit_scale=4.6052),
    pixel_shuffle_ratio=pixel_shuffle_ratio,
    object_prior_smooth=0.5,
    frozen=True,
    weights=dict(
        omg_seg=omg_head_pretrain_pth_path,
        clip=clip_pretrain_path,
        class_embed=omg_ov_class_embed_path))

model = dict(
    type=OMGLLaVA,
    stage='pretrain',
    freeze_llm=True,
    tokenizer=tokenizer,
    llm=dict(
        type=AutoModelForCausalLM.from_pretrained,
        pretrained_model_name_or_path=llm_name_or_path,
        torch_dtype=torch.float16,
        quantization_config=dict(
            type=BitsAndBytesConfig,
            load_in_4bit=True,
            load_in_8bit=False,
            llm_int8_threshold=6.0,
            llm_int8_has_fp16_weight=False,
            bnb_4bit_compute_dtype=torch.float16,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type='nf4')),
    visual_encoder=visual_encoder)
