# Tiny sibling of configs/omg_llava_7b_finetune_8gpus.py: same structure, random init, CPU-sized
# (InternLM2 with 2 layers of width 64, the committed 1000-piece tokenizer, LoRA r=8 on the same layers).
# Used by the tests and by the README demo when no released weights are present.
from peft import LoraConfig

from omg_llava.assets import TINY_TOKENIZER_DIR
from omg_llava.models import ConvNeXtCLIPBackbone
from omg_llava.models import OMGLLaVA
from omg_llava.models.llm import InternLM2Config
from omg_llava.models.llm import InternLM2ForCausalLM
from omg_llava.models.llm import InternLM2Tokenizer
from omg_llava.models import OMGSegHead
from omg_llava.models import OMGSegVisualEncoder

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
image_size = 256
pixel_shuffle_ratio = 2
num_queries = 20
omg_head_channels = 64
max_length = 1024

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

tokenizer = dict(type=InternLM2Tokenizer.from_pretrained, pretrained_model_name_or_path=TINY_TOKENIZER_DIR)

model = dict(
    type=OMGLLaVA,
    stage='finetune',
    freeze_llm=True,
    tokenizer=tokenizer,
    llm=dict(
        type=InternLM2ForCausalLM,
        config=dict(
            type=InternLM2Config,
            vocab_size=1000,
            hidden_size=64,
            intermediate_size=224,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048)),
    llm_lora=dict(type=LoraConfig, r=8, lora_alpha=4, lora_dropout=0.05, bias='none', task_type='CAUSAL_LM'),
    visual_encoder=visual_encoder,
    use_activation_checkpointing=False,
    max_length=max_length)
