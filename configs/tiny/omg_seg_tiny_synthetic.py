# OMG-Seg pre-stage of the tiny synthetic model (issue 6): the tiny visual encoder of
# omg_llava_tiny_finetune.py (ConvNeXt trunk + OMG-Seg head), randomly initialised, trained on the
# COCO instances of the synthetic shapes with Hungarian set losses, so that its object queries
# segment shapes before OMG-LLaVA is trained on top. The released OMG-LLaVA starts from a trained
# OMG-Seg in the same way (spec §3); none exists at this size.
#   python projects/tiny_omg_llava/synthetic_shapes.py --root data/synthetic_shapes
#   python -m xtuner.tools.train configs/tiny/omg_seg_tiny_synthetic.py
# Ends with work_dirs/omg_seg_tiny_synthetic/{omg_seg.pth, clip_trunk.safetensors, class_embed.pth}
# (ExportStageOutputHook), the files omg_llava_tiny_synthetic_finetune.py names in
# visual_encoder.weights.
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from mmengine.optim import CosineAnnealingLR
from mmengine.optim import LinearLR
from mmengine.optim import OptimWrapper
from torch.optim import AdamW

from omg_llava.datasets.coco_instances import CocoInstanceDataset
from omg_llava.datasets.coco_instances import instance_collate_fn
from omg_llava.engine import TrainLoop
from omg_llava.engine.hooks import ExportStageOutputHook
from omg_llava.engine.hooks import SkippedRowsHook
from omg_llava.models.omg_seg_trainer import OMGSegTrainer

with read_base():
    from .omg_llava_tiny_finetune import default_hooks  # noqa: F401
    from .omg_llava_tiny_finetune import env_cfg  # noqa: F401
    from .omg_llava_tiny_finetune import find_unused_parameters  # noqa: F401
    from .omg_llava_tiny_finetune import log_processor  # noqa: F401
    from .omg_llava_tiny_finetune import runner_type  # noqa: F401
    from .omg_llava_tiny_finetune import visual_encoder

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
image_size = 128
data_root = './data/synthetic_shapes/'
# colour x kind, the generator's CATEGORIES (projects/tiny_omg_llava/synthetic_shapes.py); the
# dataset labels its instances in this order by name, and the class embeddings are word bags of
# these names (OMGSegTrainer docstring)
class_names = [f'{colour} {kind}' for kind in ('circle', 'square', 'triangle', 'star')
               for colour in ('red', 'yellow', 'green', 'cyan', 'blue', 'purple')]
# Single-query decoding (OMGSegTrainer docstring): re-decoded matched queries and point prompts,
# each alone, so that the decoder can turn a [SEG] query or a visual prompt into its object's mask,
# as the released OMG-Seg can.
single_query_weight = 2.0
single_query_points = 1024  # the tiny masks are 32x32 = 1024 logits
criterion_points = 1024  # the same for the set losses (the reference's 12544 doubled the step time)
# Region classification from the stride-16 trunk stage (OMGSegTrainer docstring): the set losses
# alone left the shape's kind unreadable from the queries (kind of the matched query right 34 %);
# with word-bag class embeddings and this term, 61-77 % (held-out images, 2000 steps, two runs).
region_class_weight = 5.0
region_class_stage = 2
# Box regression from the matched final queries (OMGSegTrainer docstring): without it the queries
# hardly know where their object is (the centre's x is not linearly readable from them: RMSE 0.17 of
# the side, y 0.07-0.13), which "left of" / "on the right" need; with it RMSE 0.07 / 0.06, and the
# kind is readable more often too (class head 61 % -> 68 %, linear probe 70 % -> 78 %; held-out
# images, 2000 steps on 6000 training images).
box_weight = 5.0
# Referring expressions decoded as queries (OMGSegTrainer docstring): which expressions a [SEG]
# query can select is the decoder's doing, and without this term a pre-stage learns those lookups by
# chance (two runs of the same recipe: attribute expressions 49 % / 76 % right object, positions 81
# % / 57 %; docs/tiny_model_history.md). The REFER train refs are the instances' own expressions
# (same annotation ids). Weight 2 and 4 gave the same lookups (the pre-stage's own queries on the
# held-out expressions: cIoU 0.674 / 0.678, right object 77 %; referring_figures.py); 8 expressions
# per image instead of 4 did move them: cIoU 0.868, right object 94 % (positions 67 -> 96 %,
# relations 72 -> 95 %) for 763 s instead of 747 s of pre-stage.
referring_weight = 4.0
referring_per_image = 8
refs_file = data_root + 'ref_seg/refcoco/refs(unc).p'

batch_size = 8
# 2000 left the encoder visibly weaker in one of two runs (docs/tiny_model_history.md, "Run-to-run
# spread")
max_iters = 3000
lr = 1e-3
warmup_iters = 20
max_norm = 1

#######################################################################
#                      PART 2  Model & Data                           #
#######################################################################
model = dict(type=OMGSegTrainer, visual_encoder=visual_encoder, num_classes=len(class_names),
             class_names=class_names,
             criterion=dict(num_points=criterion_points), single_query_weight=single_query_weight,
             single_query_points=single_query_points, region_class_weight=region_class_weight,
             region_class_stage=region_class_stage, box_weight=box_weight,
             referring_weight=referring_weight, referring_per_image=referring_per_image)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    dataset=dict(
        type=CocoInstanceDataset,
        annotation_file=data_root + 'coco/annotations/instances_train2017.json',
        image_folder=data_root + 'coco/train2017/',
        image_size=image_size,
        category_names=class_names,
        refs_file=refs_file),
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=instance_collate_fn))

#######################################################################
#                    PART 3  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
    type=OptimWrapper,
    optimizer=dict(type=AdamW, lr=lr, betas=(0.9, 0.999), weight_decay=0),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False))

param_scheduler = [
    dict(type=LinearLR, start_factor=1e-2, by_epoch=False, begin=0, end=warmup_iters),
    dict(type=CosineAnnealingLR, eta_min=lr * 0.05, by_epoch=False, begin=warmup_iters,
         end=max_iters),
]

train_cfg = dict(type=TrainLoop, max_iters=max_iters)

#######################################################################
#                           PART 4  Runtime                           #
#######################################################################
custom_hooks = [dict(type=SkippedRowsHook), dict(type=ExportStageOutputHook)]
default_hooks.logger.interval = 20
default_hooks.checkpoint.interval = max_iters
default_hooks.checkpoint.max_keep_ckpts = 1

visualizer = None
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
