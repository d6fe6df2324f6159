# The name-binding variant of the tiny synthetic finetune (issue 26, not the installed default):
# omg_llava_tiny_synthetic_finetune.py plus text-only rows that bind names to values ("There are
# some regions: region1 red, region2 blue." + "What colour is region2?"; about 6% of the
# mixture), so that the LLM keeps the lookup it learnt in the binding part and the language stage
# of this variant (llm_tiny_synthetic_name_binding.py). Run by
# `projects/tiny_omg_llava/train_tiny.py --name-binding`; what it measured is in
# docs/tiny_model.md ("Visual prompts") and docs/tiny_model_history.md ("Run J").
from mmengine.config import read_base

with read_base():
    from .omg_llava_tiny_synthetic_finetune import *  # noqa: F401,F403

binding_rows = dict(type=LLaVADataset, data_path=data_root + 'text_binding/mixture.json',
                    image_folder='', **common)
train_dataset = dict(train_dataset, datasets=[*train_dataset['datasets'], binding_rows],
                     text_only_lm=[*train_dataset['text_only_lm'], False])
train_dataloader.dataset = train_dataset
