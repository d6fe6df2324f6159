# Language stage of the tiny synthetic model (issue 6): the tiny InternLM2 of
# omg_llava_tiny_synthetic_finetune.py, randomly initialised, trained on the text of the finetune
# conversations (image and visual prompts left out), so that it reads and repeats the user's words
# before it sees an image. The released model starts from the pretrained internlm2-chat-7b in the
# same way; no pretrained LLM exists at this size.
#   python projects/tiny_omg_llava/synthetic_shapes.py --root data/synthetic_shapes
#   python -m xtuner.tools.train configs/tiny/llm_tiny_synthetic.py
# Ends with work_dirs/llm_tiny_synthetic/llm/ (ExportStageOutputHook): a Hugging Face folder, the
# `llm.pretrained_model_name_or_path` of omg_llava_tiny_synthetic_{pretrain,finetune}.py.
from mmengine.config import read_base

from omg_llava.engine.hooks import ExportStageOutputHook
from omg_llava.models import LanguageModelTrainer

with read_base():
    from .omg_llava_tiny_synthetic_finetune import *  # noqa: F401,F403

max_iters = 600
warmup_iters = 20

model = dict(type=LanguageModelTrainer, llm=tiny_llm, tokenizer=tokenizer)

param_scheduler = [
    dict(type=LinearLR, start_factor=1e-2, by_epoch=False, begin=0, end=warmup_iters),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type=TrainLoop, max_iters=max_iters)
custom_hooks = [dict(type=DatasetInfoHook, tokenizer=tokenizer), dict(type=SkippedRowsHook),
                dict(type=ExportStageOutputHook)]
default_hooks.checkpoint.interval = max_iters
