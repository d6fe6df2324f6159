"""Log the size of each dataset and its first sample as text before a run (what xtuner's
``DatasetInfoHook`` shows), with the ``<image>`` sentinel and the OMG-LLaVA special tokens written
out."""
from __future__ import annotations

from typing import Any, Sequence

from mmengine.hooks import Hook

from omg_llava.registry import HOOKS, build_component
from omg_llava.utils.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX

from ..utils import unwrap_model


def decode_input_ids(tokenizer, input_ids: Sequence[int]) -> str:
    """Token ids → text, with the −200 sentinel shown as ``<image>`` and added tokens (``[SEG]``,
    ``<p>``, ``</p>``, ``<region>``, ``<mark>``) kept as text."""
    ids = [int(i) for i in input_ids]
    pieces, chunk = [], []
    for i in ids + [IMAGE_TOKEN_INDEX]:  # the trailing sentinel flushes the last chunk
        if i == IMAGE_TOKEN_INDEX:
            pieces.append(tokenizer.decode(chunk, skip_special_tokens=False))
            chunk = []
        else:
            chunk.append(i)
    return DEFAULT_IMAGE_TOKEN.join(pieces)


def find_tokenizer(dataset: Any) -> Any:
    """The tokenizer a dataset carries (``dataset.tokenizer``, or that of the first part of a
    mixture)."""
    if getattr(dataset, 'tokenizer', None) is not None:
        return dataset.tokenizer
    for part in getattr(dataset, 'datasets', ()):
        tokenizer = find_tokenizer(part)
        if tokenizer is not None:
            return tokenizer
    return None


@HOOKS.register_module()
class DatasetInfoHook(Hook):
    """Before training / validation / testing, log the number of samples and the decoded first
    sample.

    Args:
        tokenizer: the tokenizer (object or xtuner-style config dict); the special tokens are added
            to it.
            Default: the dataset's ``tokenizer`` (or its first part's), else the model's.
    """

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = build_component(tokenizer)
        if self.tokenizer is not None:
            from omg_llava.models.special_tokens import add_special_tokens
            add_special_tokens(self.tokenizer)

    def before_train(self, runner) -> None:
        self._log_dataset(runner, 'train', runner.train_dataloader.dataset)

    def before_val(self, runner) -> None:
        self._log_dataset(runner, 'val', runner.val_dataloader.dataset)

    def before_test(self, runner) -> None:
        self._log_dataset(runner, 'test', runner.test_dataloader.dataset)

    def _log_dataset(self, runner, mode: str, dataset: Any) -> None:
        runner.logger.info(f'{mode} dataset: {len(dataset)} samples ({type(dataset).__name__})')
        if len(dataset) == 0:
            return
        tokenizer = self.tokenizer if self.tokenizer is not None else find_tokenizer(dataset)
        if tokenizer is None:
            tokenizer = getattr(unwrap_model(runner.model), 'tokenizer', None)
        if tokenizer is None:
            runner.logger.warning(f'{mode} dataset: no tokenizer to decode the first sample; pass '
                                  'DatasetInfoHook(tokenizer=...)')
            return
        sample = dataset[0]
        input_ids = sample['input_ids']
        labels = sample.get('labels')
        supervised = '' if labels is None else f', {sum(int(t) >= 0 for t in labels)} supervised'
        runner.logger.info(f'first {mode} sample ({len(input_ids)} tokens{supervised}):\n'
                           f'{decode_input_ids(tokenizer, input_ids)}')
