# Copyright (c) omg-llava contributors. OMG-LLaVA 7B finetune (reference: omg_llava_7b_finetune_8gpus).
# Run with:  python -m xtuner.tools.train configs/omg_llava_7b_finetune_8gpus.py --deepspeed deepspeed_zero2
# PART 1 and 2 (model) are complete; data, schedule and runtime arrive with the training issue (see docs/).
from mmengine.config import read_base

with read_base():
    from ._base_.omg_llava_7b_model import *  # noqa: F401,F403

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# The reference config names 'omg_llava_7b_pretrain_1024image_8gpus.pth'; the released file is this one.
pretrained_pth = pretrained_dir + 'omg_llava_7b_pretrain_8gpus.pth'
max_length = 1692  # text tokens: 2048 - (1024 / 64)**2 image tokens - 100

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
model.update(
    stage='finetune',
    pretrained_pth=pretrained_pth,
    llm_lora=dict(
        type=LoraConfig,
        r=512,
        lora_alpha=256,
        lora_dropout=0.05,
        bias='none',
        task_type='CAUSAL_LM'))
