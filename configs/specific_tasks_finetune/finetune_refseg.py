# Copyright (c) omg-llava contributors. Referring-segmentation finetune (reference:
# finetune_refseg.py). Starts from the general finetune checkpoint and also trains copies of the OMG
# mask decoder that decode [SEG] (require_omg_decoder in the reference; with_llm_decoder_copy here).
# Data: the 12 referring-seg entries.
#   NPROC_PER_NODE=8 python -m xtuner.tools.train \
#       configs/specific_tasks_finetune/finetune_refseg.py --deepspeed deepspeed_zero2
from mmengine.config import read_base

from omg_llava.datasets import CombinedDataset

with read_base():
    from ..omg_llava_7b_finetune_8gpus import *  # noqa: F401,F403

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
pretrained_pth = pretrained_dir + 'omg_llava_7b_finetune_8gpus.pth'

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
model.visual_encoder.panoptic_head.update(with_llm_decoder_copy=True)
model.update(pretrained_pth=pretrained_pth)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
train_dataloader.dataset = dict(type=CombinedDataset, datasets=refer_seg_datasets, repeats=None,
                                shuffle_seed=42)
