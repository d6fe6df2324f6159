# Tiny sibling of configs/omg_llava_7b_finetune_8gpus.py: same structure, random init, CPU-sized
# (InternLM2 with 2 layers of width 64, the committed 1000-piece tokenizer, LoRA r=8 on the same
# layers). Used by the tests and by the README demo when no released weights are present. It trains
# on CPU on the small real data set of projects/tiny_omg_llava/build_tiny_data.py (same formats and
# layout as ./data/):
#   python projects/tiny_omg_llava/build_tiny_data.py --root data/tiny_omg_llava
#   python -m xtuner.tools.train configs/tiny/omg_llava_tiny_finetune.py
from mmengine.hooks import DistSamplerSeedHook
from mmengine.hooks import IterTimerHook
from mmengine.hooks import LoggerHook
from mmengine.hooks import ParamSchedulerHook
from mmengine.optim import CosineAnnealingLR
from mmengine.optim import LinearLR
from mmengine.optim import OptimWrapper
from peft import LoraConfig
from torch.optim import AdamW

from omg_llava.datasets import CombinedDataset
from omg_llava.datasets import LengthGroupedSampler
from omg_llava.datasets import omg_llava_collate_fn
from omg_llava.datasets.gcg import GranDfGCGDataset
from omg_llava.datasets.llava import LLaVADataset
from omg_llava.datasets.mdpv import MDPVPointDataset
from omg_llava.datasets.osprey import OspreyRegionCaptionDataset
from omg_llava.datasets.refer_seg import ReferSegDataset
from omg_llava.datasets.semantic_seg import SemanticSegDataset
from omg_llava.engine import CPUDataParallelRunner
from omg_llava.engine import TrainLoop
from omg_llava.engine.hooks import AtomicCheckpointHook
from omg_llava.engine.hooks import DatasetInfoHook
from omg_llava.engine.hooks import EvaluateChatHook
from omg_llava.engine.hooks import SkippedRowsHook

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

# Data (projects/tiny_omg_llava/build_tiny_data.py writes it)
data_root = './data/tiny_omg_llava/'
glamm_images = data_root + 'glamm_data/images/'
coco2014_train = glamm_images + 'coco2014/train2014/'
ade20k_root = data_root + 'ade20k/ADEChallengeData2016/'
max_length = 1024

# Scheduler & optimizer
batch_size = 2  # per device
accumulative_counts = 1
dataloader_num_workers = 0
max_iters = 40
optim_type = AdamW
lr = 1e-3
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1  # grad clip
warmup_iters = 4

# Save
save_steps = 20
save_total_limit = 2

# Evaluate the generation performance during the training
evaluation_freq = 20
evaluation_images = data_root + 'test.jpg'
evaluation_inputs = ['Please segment the person in this image.']

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
visual_encoder = dict(
    type=OMGSegVisualEncoder,
    backbone=dict(type=ConvNeXtCLIPBackbone, depths=(1, 1, 2, 1), dims=(32, 64, 128, 256),
                  clip_embed_dim=32),
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

tokenizer = dict(type=InternLM2Tokenizer.from_pretrained,
                 pretrained_model_name_or_path=TINY_TOKENIZER_DIR)

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
    llm_lora=dict(type=LoraConfig, r=8, lora_alpha=4, lora_dropout=0.05, bias='none',
                  task_type='CAUSAL_LM'),
    visual_encoder=visual_encoder,
    use_activation_checkpointing=False,
    max_length=max_length)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
common = dict(tokenizer=tokenizer, image_size=image_size, max_length=max_length)
train_dataset = dict(
    type=CombinedDataset,
    datasets=[
        dict(type=LLaVADataset,
             data_path=data_root + 'llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json',
             image_folder=data_root + 'llava_data/llava_images', **common),
        dict(type=GranDfGCGDataset,
             annotation_file=data_root + 'glamm_data/annotations/GranDf_HA_GCG_train.json',
             image_folder=glamm_images + 'grandf/train/', **common),
        dict(type=SemanticSegDataset, kind='ade20k', image_folder=ade20k_root + 'images/training/',
             label_folder=ade20k_root + 'annotations/training/',
             class_names=data_root + 'ade20k/ade20k_classes.json', **common),
        dict(type=ReferSegDataset, data_root=data_root + 'ref_seg/', dataset='refcoco',
             split_by='unc', image_folder=coco2014_train, **common),
        dict(type=OspreyRegionCaptionDataset,
             annotation_file=data_root + 'region_caption/osprey/osprey_detail_description.json',
             image_folder=coco2014_train, **common),
        dict(type=MDPVPointDataset, annotation_file=data_root + 'mdpv_point/gpt4v_tiny_point.json',
             image_folder=data_root + 'mdpv_point/images/', **common),
    ],
    shuffle_seed=42)

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
optim_wrapper = dict(
    type=OptimWrapper,  # fp32 on CPU: no AMP, no DeepSpeed
    optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts)

param_scheduler = [
    dict(type=LinearLR, start_factor=1e-2, by_epoch=False, begin=0, end=warmup_iters),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]

train_cfg = dict(type=TrainLoop, max_iters=max_iters)

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
        image_size=image_size,
        max_new_tokens=16),
]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=5),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=AtomicCheckpointHook, by_epoch=False, interval=save_steps,
                    max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='gloo'),
)
# a plain Runner unless launched (torchrun ... --launcher pytorch); then data-parallel on CPU
# processes too (omg_llava/engine/cpu_runner.py). Some parameters get no gradient in some steps (the
# region / point prompt encoders without such rows, the [SEG] path without referring rows), hence
# find_unused_parameters.
runner_type = CPUDataParallelRunner
find_unused_parameters = True

visualizer = None
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
log_processor = dict(by_epoch=False)
