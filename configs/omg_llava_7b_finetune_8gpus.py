# Copyright (c) omg-llava contributors.
# OMG-LLaVA 7B finetune (reference: omg_llava_7b_finetune_8gpus). Run with:
#   NPROC_PER_NODE=8 python -m xtuner.tools.train configs/omg_llava_7b_finetune_8gpus.py \
#       --deepspeed deepspeed_zero2
# LoRA (r=512) on the 4-bit LLM + both projectors + the vocabulary, on the 42-entry data mixture of
# spec §8.3.
from mmengine.config import read_base
from mmengine.hooks import DistSamplerSeedHook
from mmengine.hooks import IterTimerHook
from mmengine.hooks import LoggerHook
from mmengine.hooks import ParamSchedulerHook
from mmengine.optim import AmpOptimWrapper
from mmengine.optim import CosineAnnealingLR
from mmengine.optim import LinearLR
from torch.optim import AdamW

from omg_llava.datasets import CombinedDataset
from omg_llava.datasets import LengthGroupedSampler
from omg_llava.datasets import omg_llava_collate_fn
from omg_llava.datasets.gcg import FlickrGCGDataset
from omg_llava.datasets.gcg import GranDfGCGDataset
from omg_llava.datasets.gcg import OpenPsgGCGDataset
from omg_llava.datasets.gcg import RefCOCOgGCGDataset
from omg_llava.datasets.llava import LLaVADataset
from omg_llava.datasets.mdpv import MDPVPointDataset
from omg_llava.datasets.osprey import OspreyRegionCaptionDataset
from omg_llava.datasets.osprey import OspreyRegionConversationDataset
from omg_llava.datasets.refer_seg import ReferSegDataset
from omg_llava.datasets.semantic_seg import SemanticSegDataset
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
# The reference config names 'omg_llava_7b_pretrain_1024image_8gpus.pth'; the released file is this
# one.
pretrained_pth = pretrained_dir + 'omg_llava_7b_pretrain_8gpus.pth'

# Data: the released config's ./data layout and file names (docs/training.md lists every file)
data_root = './data/'
llava_data_path = data_root + 'llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json'
llava_image_folder = data_root + 'llava_data/llava_images'
glamm_annotations = data_root + 'glamm_data/annotations/'
glamm_images = data_root + 'glamm_data/images/'
coco2014_train = glamm_images + 'coco2014/train2014/'
coco2017_train = glamm_images + 'coco2017/train2017/'
ade20k_root = data_root + 'semantic_seg/ADEChallengeData2016/'
cocostuff_label_folder = (
    data_root + 'semantic_seg/coco_stuff/stuffthingmaps_trainval2017/train2017/'
)
# the class lists ship with the reference code (omg_llava/dataset/utils/ there), not with the data
ade20k_class_file = data_root + 'semantic_seg/ade20k_classes.json'
cocostuff_class_file = data_root + 'semantic_seg/cocostuff_classes.txt'
ref_seg_root = data_root + 'ref_seg/'
osprey_root = data_root + 'region_caption/osprey/'
mdpv_root = data_root + 'mdpv_point/'
# MDPV: images missing here are read from .../vg/VG_100K_2
vg_images = llava_image_folder + '/vg/VG_100K'
max_length = 1692  # text tokens: 2048 - (1024 / 64)**2 image tokens - 100

# Scheduler & optimizer
batch_size = 8  # per device
accumulative_counts = 2
dataloader_num_workers = 4
max_epochs = 1
optim_type = AdamW
lr = 2e-4
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # grad clip
warmup_ratio = 0.03

# Save
save_steps = 2000
save_total_limit = 4  # maximum checkpoints to keep (-1 means unlimited)

# Evaluate the generation performance during the training
evaluation_freq = 2000
evaluation_images = './test.jpg'
evaluation_inputs = [
    '请描述一下这张照片', 'Please describe this picture',
    'Could you please give me a detailed description of the image? Please respond with interleaved '
    'segmentation masks for the corresponding parts of the answer.'
]

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

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
common = dict(tokenizer=tokenizer, image_size=image_size, max_length=max_length)

llava_dataset = dict(type=LLaVADataset, data_path=llava_data_path, image_folder=llava_image_folder,
                     **common)
gcg_datasets = [
    dict(type=FlickrGCGDataset,
         annotation_file=glamm_annotations + 'flickr_mergedGT_GCG_train.json',
         image_folder=glamm_images + 'flickr30k/Flickr30K/', **common),
    dict(type=RefCOCOgGCGDataset, annotation_file=glamm_annotations + 'RefCOCOg_GCG_train.json',
         image_folder=coco2014_train, **common),
    dict(type=GranDfGCGDataset, annotation_file=glamm_annotations + 'GranDf_HA_GCG_train.json',
         image_folder=glamm_images + 'grandf/train/', **common),
    dict(type=OpenPsgGCGDataset, annotation_file=glamm_annotations + 'OpenPsgGCG_train.json',
         image_folder=glamm_images + 'coco2017/', **common),
]
# Semantic and referring segmentation appear three times, interleaved as in the released config
# (ADE20K, COCO-Stuff, ADE20K, ...; RefCOCO, RefCOCO+, RefCOCOg, RefCLEF, RefCOCO, ...). The copies
# differ in their seed (the reference's copies differ in their random draws).
semantic_seg_sources = {
    'ade20k': dict(kind='ade20k', image_folder=ade20k_root + 'images/training/',
                   label_folder=ade20k_root + 'annotations/training/',
                   class_names=ade20k_class_file),
    'cocostuff': dict(kind='cocostuff', image_folder=coco2017_train,
                      label_folder=cocostuff_label_folder, class_names=cocostuff_class_file),
}
semantic_seg_datasets = [
    dict(type=SemanticSegDataset, seed=seed, **semantic_seg_sources[name], **common)
    for seed in (0, 1, 2) for name in ('ade20k', 'cocostuff')
]
refer_seg_datasets = [
    dict(type=ReferSegDataset, data_root=ref_seg_root, dataset=name, split_by=split_by,
         image_folder=ref_seg_root + 'saiapr_tc-12/' if name == 'refclef' else coco2014_train,
         seed=seed, **common)
    for seed in (0, 1, 2)
    for name, split_by in (('refcoco', 'unc'), ('refcoco+', 'unc'), ('refcocog', 'umd'),
                           ('refclef', 'unc'))
]
region_datasets = [
    dict(type=OspreyRegionCaptionDataset,
         annotation_file=osprey_root + 'osprey_detail_description.json',
         image_folder=coco2014_train, **common),
    dict(type=OspreyRegionConversationDataset,
         annotation_file=osprey_root + 'osprey_conversation.json',
         image_folder=coco2014_train, **common),
]
# MDPV point data: (annotation file, image folder) per source, names, folders and order as in the
# released config. The rows' `image` values carry the annotators' folders; the dataset reads their
# basename in these folders.
mdpv_sources = [
    ('gpt4v_ade20k_detailed_caption_point.json', ade20k_root + 'images/training/'),
    ('gpt4v_cocostuff_10k_detailed_caption_point.json', coco2014_train),
    ('gpt4v_cocostuff_164k_detailed_caption_point.json', coco2017_train),
    ('gpt4v_vg_detailed_caption_point.json', vg_images),
    ('gpt4v_lvis_brief_caption_point.json', coco2017_train),
    ('gpt4v_vg_brief_caption_point.json', vg_images),
    ('gpt4v_ade20k_brief_caption_point.json', ade20k_root + 'images/training/'),
    ('gpt4v_cocostuff_10k_brief_caption_point.json', coco2014_train),
    ('gpt4v_cocostuff_164k_brief_caption_point.json', coco2017_train),
    ('gpt4v_vg_QA_point.json', vg_images),
    ('gpt4v_lvis_QA_point.json', coco2017_train),
    ('gpt4v_ade20k_QA_point.json', ade20k_root + 'images/training/'),
    ('gpt4v_cocostuff_10k_QA_point.json', coco2014_train),
    ('gpt4v_cocostuff_164k_QA_point.json', coco2017_train),
    ('Flicker30K_multi_points_to_caption.json', glamm_images + 'flickr30k/Flickr30K/'),
    ('OpenPsgGCG_train_multi_points_to_caption.json', coco2017_train),
]
mdpv_datasets = [
    dict(type=MDPVPointDataset, annotation_file=mdpv_root + name, image_folder=folder, **common)
    for name, folder in mdpv_sources
]

# The released config's order (concatenated, then permuted once with seed 42: the same order for the
# same lengths)
train_dataset = dict(
    type=CombinedDataset,
    datasets=[llava_dataset]
    + gcg_datasets
    + semantic_seg_datasets
    + refer_seg_datasets
    + region_datasets
    + mdpv_datasets,
    repeats=[1, 1, 1, 10, 1] + [1] * (6 + 12 + 2 + len(mdpv_sources)),  # GranDf x10
    shuffle_seed=42,
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    dataset=train_dataset,
    sampler=dict(
        type=LengthGroupedSampler,
        length_property='modality_length',
        per_device_batch_size=batch_size * accumulative_counts),
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
