"""Runner hooks of the OMG-LLaVA configs (spec §8.1): atomic checkpoints, dataset summary,
skipped-row report, in-training chat evaluation, and the export of what a training stage hands to
the next."""
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .dataset_info_hook import DatasetInfoHook, decode_input_ids
from .evaluate_chat_hook import EvaluateChatHook
from .export_stage_output_hook import ExportStageOutputHook
from .skipped_rows_hook import SkippedRowsHook

__all__ = ['AtomicCheckpointHook', 'DatasetInfoHook', 'EvaluateChatHook', 'ExportStageOutputHook',
           'SkippedRowsHook', 'decode_input_ids']
