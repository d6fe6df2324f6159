# Tiny sibling of configs/omg_llava_7b_pretrain_8gpus.py: the tiny model of
# omg_llava_tiny_finetune.py without LoRA, trained on the LLaVA-Pretrain-format captions of the tiny
# data set (LM loss + 10 x MSE alignment).
#   python projects/tiny_omg_llava/build_tiny_data.py --root data/tiny_omg_llava
#   python -m xtuner.tools.train configs/tiny/omg_llava_tiny_pretrain.py
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler

from omg_llava.datasets.llava import LLaVADataset

with read_base():
    from .omg_llava_tiny_finetune import *  # noqa: F401,F403

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
data_path = data_root + 'llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json'
image_folder = data_root + 'llava_data/LLaVA-Pretrain/images'

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
model.update(stage='pretrain', llm_lora=None)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
# assignment, not update(): update() would merge the new dataset dict into the inherited mixture
train_dataloader.dataset = dict(type=LLaVADataset, data_path=data_path, image_folder=image_folder,
                                **common)
train_dataloader.sampler = dict(type=DefaultSampler, shuffle=True)
