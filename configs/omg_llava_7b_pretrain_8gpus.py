# Copyright (c) omg-llava contributors. OMG-LLaVA 7B pretrain (reference: omg_llava_7b_pretrain_8gpus).
# Run with:  python -m xtuner.tools.train configs/omg_llava_7b_pretrain_8gpus.py --deepspeed deepspeed_zero2
# Trains the two projectors (LM loss + 10 x MSE alignment of projector_text2vision); the LLM and the
# visual encoder stay frozen. PART 1 and 2 (model) are complete; data, schedule and runtime arrive with the
# training issue (see docs/).
from mmengine.config import read_base

with read_base():
    from ._base_.omg_llava_7b_model import *  # noqa: F401,F403

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
max_length = 1792  # text tokens: 2048 - (1024 / 64)**2 image tokens

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
model.update(stage='pretrain')
