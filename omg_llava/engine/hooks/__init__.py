"""Runner hooks of the OMG-LLaVA configs (spec §8.1): dataset summary and in-training chat evaluation."""
from .dataset_info_hook import DatasetInfoHook, decode_input_ids
from .evaluate_chat_hook import EvaluateChatHook

__all__ = ['DatasetInfoHook', 'EvaluateChatHook', 'decode_input_ids']
