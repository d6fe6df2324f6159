# Copyright (c) omg-llava contributors.
# OMG-LLaVA 7B pretrain (reference: omg_llava_7b_pretrain_8gpus). Run with:
#   NPROC_PER_NODE=8 python -m xtuner.tools.train configs/omg_llava_7b_pretrain_8gpus.py \
#       --deepspeed deepspeed_zero2
# Trains the two projectors (LM loss + 10 x MSE alignment of projector_text2vision) on
# LLaVA-Pretrain captions; the 4-bit LLM and the visual encoder stay frozen.
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from mmengine.hooks import DistSamplerSeedHook
from mmengine.hooks import IterTimerHook
from mmengine.hooks import LoggerHook
from mmengine.hooks import ParamSchedulerHook
from mmengine.optim import AmpOptimWrapper
from mmengine.optim import CosineAnnealingLR
from mmengine.optim import LinearLR
from torch.optim import AdamW

from omg_llava.datasets import omg_llava_collate_fn
from omg_llava.datasets.llava import LLaVADataset
from omg_llava.engine import TrainLoop
from omg_llava.engine.hooks import AtomicCheckpointHook
from omg_llava.engine.hooks import DatasetInfoHook
from omg_llava.engine.hooks import EvaluateChatHook
from omg_llava.engine.hooks import SkippedRowsHook

with read_base():
    from ._base_.omg_llava_7b_model import *  # noqa: F401,F403

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Data
data_root = './data/'
data_path = data_root + 'llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json'
image_folder = data_root + 'llava_data/LLaVA-Pretrain/images'
max_length = 1792  # text tokens: 2048 - (1024 / 64)**2 image tokens

# Scheduler & optimizer
batch_size = 16  # per device
accumulative_counts = 2
dataloader_num_workers = 4
max_epochs = 1
optim_type = AdamW
lr = 1e-3
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # grad clip
warmup_ratio = 0.03

# Save
save_steps = 500
save_total_limit = 2  # maximum checkpoints to keep (-1 means unlimited)

# Evaluate the generation performance during the training
evaluation_freq = 200
evaluation_images = './test.jpg'
evaluation_inputs = ['请描述一下这张照片', 'Please describe this picture']

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
model.update(stage='pretrain')

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
train_dataset = dict(
    type=LLaVADataset,
    data_path=data_path,
    image_folder=image_folder,
    tokenizer=tokenizer,
    image_size=image_size,
    max_length=max_length)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    dataset=train_dataset,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=omg_llava_collate_fn))

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
# optimizer (replaced by DeepSpeedOptimWrapper when --deepspeed is given; bf16 on bf16-capable GPUs)
optim_wrapper = dict(
    type=AmpOptimWrapper,
    optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
    loss_scale='dynamic',
    dtype='float16')

# learning policy: linear warm-up for 3 % of the iterations, then cosine to 0
param_scheduler = [
    dict(
        type=LinearLR,
        start_factor=1e-5,
        by_epoch=True,
        begin=0,
        end=warmup_ratio * max_epochs,
        convert_to_iter_based=True),
    dict(
        type=CosineAnnealingLR,
        eta_min=0.0,
        by_epoch=True,
        begin=warmup_ratio * max_epochs,
        end=max_epochs,
        convert_to_iter_based=True)
]

train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
custom_hooks = [
    dict(type=DatasetInfoHook, tokenizer=tokenizer),
    dict(type=SkippedRowsHook),
    dict(
        type=EvaluateChatHook,
        every_n_iters=evaluation_freq,
        evaluation_inputs=evaluation_inputs,
        evaluation_images=evaluation_images,
        image_size=image_size),
]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=10),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=AtomicCheckpointHook, by_epoch=False, interval=save_steps,
                    max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)

visualizer = None
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
log_processor = dict(by_epoch=False)
