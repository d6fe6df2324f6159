# The name-binding variant of the tiny synthetic pretrain (issue 26, not the installed default):
# omg_llava_tiny_synthetic_pretrain.py with the text-only binding rows of
# omg_llava_tiny_synthetic_finetune_name_binding.py next to the captions (40% of the rows): trained
# on captions alone, the whole LLM forgets the names it bound before (docs/tiny_model_history.md).
from mmengine.config import read_base

with read_base():
    from .omg_llava_tiny_synthetic_pretrain import *  # noqa: F401,F403

train_dataloader.dataset = dict(
    type=CombinedDataset,
    datasets=[train_dataloader.dataset,
              dict(type=LLaVADataset, data_path=data_root + 'text_binding/mixture.json',
                   image_folder='', **common)],
    shuffle_seed=42)
