"""Runner hooks of the OMG-LLaVA configs (spec §8.1): dataset summary, in-training chat evaluation, and the
export of a pre-trained OMG-Seg encoder."""
from .dataset_info_hook import DatasetInfoHook, decode_input_ids
from .evaluate_chat_hook import EvaluateChatHook
from .export_omg_seg_hook import ENCODER_FILES, ExportOMGSegHook

__all__ = ['DatasetInfoHook', 'ENCODER_FILES', 'EvaluateChatHook', 'ExportOMGSegHook', 'decode_input_ids']
