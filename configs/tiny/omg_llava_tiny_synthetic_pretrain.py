# Stage 3 of the tiny synthetic model (see omg_llava_tiny_synthetic_finetune.py): the pretrain stage
# of the 7B recipe on the synthetic LLaVA-Pretrain-format captions. The projector learns to feed the
# encoder's tokens to the LLM, and projector_text2vision learns to invert the query path (10 x MSE),
# so that a [SEG] hidden state that copies an object token decodes to that object.
# Unlike the 7B recipe, the LLM trains here too (freeze_llm=False, so the checkpoint holds it): the
# 7B recipe's frozen internlm2-chat-7b already reads what a projector puts in front of it, the tiny
# language-stage LLM has only seen text. Frozen, it learnt nothing from the image: after the whole
# recipe, its caption colour words were right for 19% with the image's own visual tokens and 16%
# with another image's (chance 17%). Trained, it learns to read after ~1000 iterations (a sudden
# drop of the LM loss): caption colour / kind words 94% / 89% right with the own tokens, 16% / 25%
# with another image's (projects/tiny_omg_llava/image_use.py, docs/tiny_model_history.md).
#   python -m xtuner.tools.train configs/tiny/omg_llava_tiny_synthetic_pretrain.py
#   python tools/convert_to_pth.py configs/tiny/omg_llava_tiny_synthetic_pretrain.py \
#       work_dirs/omg_llava_tiny_synthetic_pretrain/iter_2500.pth --save-path PRETRAIN.pth
#       --trust-checkpoint
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler

with read_base():
    from .omg_llava_tiny_synthetic_finetune import *  # noqa: F401,F403

max_iters = 2500
warmup_iters = 20
evaluation_inputs = ['Describe the image briefly.']

# no auxiliary losses: no [SEG] to hint, and a caption is only predictable from its image (no
# text-only LM loss)
model.update(stage='pretrain', pretrained_pth=None, freeze_llm=False, auxiliary_losses=[])

train_dataloader.dataset = dict(
    type=LLaVADataset,
    data_path=data_root + 'llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json',
    image_folder=data_root + 'llava_data/LLaVA-Pretrain/images',
    **common,
)
train_dataloader.sampler = dict(type=DefaultSampler, shuffle=True)

param_scheduler = [
    dict(type=LinearLR, start_factor=1e-2, by_epoch=False, begin=0, end=warmup_iters),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type=TrainLoop, max_iters=max_iters)
custom_hooks = [
    dict(type=DatasetInfoHook, tokenizer=tokenizer),
    dict(type=SkippedRowsHook),
    dict(type=EvaluateChatHook, every_n_iters=max_iters, evaluation_inputs=evaluation_inputs,
         evaluation_images=evaluation_images, image_size=image_size, max_new_tokens=48),
]
default_hooks.checkpoint.interval = max_iters
