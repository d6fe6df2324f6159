# The name-binding variant of the tiny language stage (issue 26, not the installed default):
# llm_tiny_synthetic.py started from the binding part (projects/tiny_omg_llava/name_binding.py:
# the tiny LLM learns to look up what follows a name from text rows, checked), on the finetune
# variant's text plus binding rows in every wording with two and three names
# (text_binding/language.json, 3 times: about a third of the rows). Started from random init, the
# language stage never learnt the lookup (docs/tiny_model_history.md).
#   python projects/tiny_omg_llava/synthetic_shapes.py --root data/synthetic_shapes
#   python projects/tiny_omg_llava/name_binding.py --data-root data/synthetic_shapes \
#       --out name_binding
#   python -m xtuner.tools.train configs/tiny/llm_tiny_synthetic_name_binding.py
from mmengine.config import read_base

with read_base():
    from .llm_tiny_synthetic import *  # noqa: F401,F403

max_iters = 1000
# half the finetune's rate: at 1e-3 the stage unlearnt part of the binding part's lookup (two names
# in every form 0.785, three 0.245, on the same start); 5e-4 kept it (0.905, three 0.545), 3e-4
# kept it too but fitted the long GCG rows worse (docs/tiny_model_history.md, "Run J")
lr = 5e-4
optim_wrapper.optimizer.lr = lr
param_scheduler = [
    dict(type=LinearLR, start_factor=1e-2, by_epoch=False, begin=0, end=warmup_iters),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type=TrainLoop, max_iters=max_iters)
default_hooks.checkpoint.interval = max_iters
# the binding part's Hugging Face folder (train_tiny.py points this at WORK_DIR/name_binding/llm)
name_binding_llm = './name_binding/llm'
model.llm = dict(type=InternLM2ForCausalLM.from_pretrained,
                 pretrained_model_name_or_path=name_binding_llm)
binding_rows = dict(type=LLaVADataset, image_folder='', **common)
train_dataloader.dataset = dict(
    train_dataset,
    datasets=[*train_dataset['datasets'],
              dict(binding_rows, data_path=data_root + 'text_binding/mixture.json'),
              dict(binding_rows, data_path=data_root + 'text_binding/language.json')],
    repeats=[1] * len(train_dataset['datasets']) + [1, 3],
    text_only_lm=None)
