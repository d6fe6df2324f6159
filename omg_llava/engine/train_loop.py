"""An iteration-based training loop that also accepts a number of epochs.

Why it exists: the OMG-LLaVA configs (spec §8.1) train for "1 epoch" with iteration-based
schedules, through ``xtuner.engine.runner.TrainLoop``. xtuner 0.1.11, the version this project pins,
does not ship that class, and mmengine's ``IterBasedTrainLoop`` only takes ``max_iters``. This loop
takes exactly one of ``max_iters`` / ``max_epochs`` and turns epochs into iterations with the length
of the (per-rank) dataloader, so schedulers, checkpoints and logs stay iteration-based.
"""
from typing import Dict, Optional, Union

from mmengine.runner import IterBasedTrainLoop
from torch.utils.data import DataLoader

from omg_llava.registry import LOOPS


@LOOPS.register_module()
class TrainLoop(IterBasedTrainLoop):
    """``IterBasedTrainLoop`` configured by ``max_iters`` or by ``max_epochs``.

    Args:
        runner (Runner): The runner that owns the loop.
        dataloader (DataLoader | dict): A dataloader, or the config mmengine builds it from.
        max_iters (int, optional): Total training iterations.
        max_epochs (int, optional): Total passes over the dataloader; converted to
            ``max_epochs * len(dataloader)`` iterations.
        **kwargs: Passed on to ``IterBasedTrainLoop`` (``val_begin``, ``val_interval``, ...).

    Raises:
        ValueError: If both or neither of ``max_iters`` and ``max_epochs`` are given, or if
            ``max_epochs`` is given with an empty dataloader.
    """

    def __init__(self,
                 runner,
                 dataloader: Union[DataLoader, Dict],
                 max_iters: Optional[int] = None,
                 max_epochs: Optional[int] = None,
                 **kwargs) -> None:
        if (max_iters is None) == (max_epochs is None):
            raise ValueError('TrainLoop needs exactly one of `max_iters` and `max_epochs`, got '
                             f'max_iters={max_iters!r}, max_epochs={max_epochs!r}.')
        if max_epochs is not None:
            if isinstance(dataloader, dict):
                # Built here (as BaseLoop would) because its length is needed before super().
                diff_rank_seed = runner._randomness_cfg.get('diff_rank_seed', False)
                dataloader = runner.build_dataloader(
                    dataloader, seed=runner.seed, diff_rank_seed=diff_rank_seed)
            if len(dataloader) == 0:
                raise ValueError('TrainLoop got `max_epochs` but the train dataloader is empty; '
                                 'check the dataset path and batch size.')
            max_iters = int(max_epochs) * len(dataloader)
        super().__init__(runner=runner, dataloader=dataloader, max_iters=max_iters, **kwargs)
