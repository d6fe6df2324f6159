# Language stage of the tiny synthetic model (issue 6): the tiny InternLM2 of
# omg_llava_tiny_synthetic_finetune.py, trained on the text of the finetune conversations (image
# and visual prompts left out), so that it reads and repeats the user's words before it sees an
# image, and on text rows that bind names to values in every wording, with two and three names
# (text_binding/language.json, 3 times). It starts from the binding part
# (projects/tiny_omg_llava/name_binding.py: from random init, the two-name rows of one wording,
# checked), where the tiny LLM learns to look up a name's value; started from random init, this
# stage never learnt that (docs/tiny_model.md, "Visual prompts"). The released model starts from
# the pretrained internlm2-chat-7b in the same way; no pretrained LLM exists at this size.
#   python projects/tiny_omg_llava/synthetic_shapes.py --root data/synthetic_shapes
#   python projects/tiny_omg_llava/name_binding.py --data-root data/synthetic_shapes \
#       --out name_binding
#   python -m xtuner.tools.train configs/tiny/llm_tiny_synthetic.py
# Ends with work_dirs/llm_tiny_synthetic/llm/ (ExportStageOutputHook): a Hugging Face folder, the
# `llm.pretrained_model_name_or_path` of omg_llava_tiny_synthetic_{pretrain,finetune}.py.
from mmengine.config import read_base

from omg_llava.engine.hooks import ExportStageOutputHook
from omg_llava.models import LanguageModelTrainer

with read_base():
    from .omg_llava_tiny_synthetic_finetune import *  # noqa: F401,F403

max_iters = 1000
warmup_iters = 20
# half the finetune's rate: at 1e-3 the stage unlearnt part of the binding part's lookup (two names
# in every form 0.785, three 0.245, on the same start); 5e-4 kept it (0.905, three 0.545), 3e-4
# kept it too but fitted the long GCG rows worse (docs/tiny_model_history.md, "Run J")
lr = 5e-4
optim_wrapper.optimizer.lr = lr

# the binding part's Hugging Face folder (train_tiny.py points this at WORK_DIR/name_binding/llm)
name_binding_llm = './name_binding/llm'
model = dict(type=LanguageModelTrainer,
             llm=dict(type=InternLM2ForCausalLM.from_pretrained,
                      pretrained_model_name_or_path=name_binding_llm),
             tokenizer=tokenizer)
train_dataloader.dataset = dict(
    train_dataset,
    datasets=[*train_dataset['datasets'],
              dict(binding_rows, data_path=data_root + 'text_binding/language.json')],
    repeats=[1] * len(train_dataset['datasets']) + [3],
    text_only_lm=None)

param_scheduler = [
    dict(type=LinearLR, start_factor=1e-2, by_epoch=False, begin=0, end=warmup_iters),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type=TrainLoop, max_iters=max_iters)
custom_hooks = [dict(type=DatasetInfoHook, tokenizer=tokenizer), dict(type=SkippedRowsHook),
                dict(type=ExportStageOutputHook)]
default_hooks.checkpoint.interval = max_iters
