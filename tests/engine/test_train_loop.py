"""TrainLoop: epochs become iterations, through mmengine's Runner on CPU."""
import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

from omg_llava.engine import TrainLoop


class ToyDataset(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> dict:
        return dict(inputs=torch.full((2,), float(index)), target=torch.tensor([float(index)]))


class ToyModel(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, target, mode='tensor'):
        pred = self.linear(inputs)  # (B, 1)
        if mode == 'loss':
            return dict(loss=torch.nn.functional.mse_loss(pred, target))
        return pred


def build_runner(tmp_path, train_cfg: dict) -> Runner:
    return Runner(
        model=ToyModel(),
        work_dir=str(tmp_path),
        train_dataloader=dict(dataset=ToyDataset(), batch_size=2,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        train_cfg=train_cfg,
        optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(logger=None, checkpoint=None, timer=None, param_scheduler=None,
                           sampler_seed=None),
        default_scope='mmengine',
        experiment_name=f'toy_{tmp_path.name}',
    )


@pytest.mark.parametrize('train_cfg, expected_iters', [
    (dict(type=TrainLoop, max_epochs=2), 6),  # 2 epochs x 3 batches of 2
    (dict(type=TrainLoop, max_iters=3), 3),
    (dict(type='omg_llava.TrainLoop', max_epochs=1), 3),  # scoped string name, via the registry
])
def test_train_loop_runs_expected_iterations(tmp_path, train_cfg, expected_iters):
    runner = build_runner(tmp_path, train_cfg)
    weight_before = runner.model.linear.weight.detach().clone()
    runner.train()
    assert isinstance(runner.train_loop, TrainLoop)
    assert runner.train_loop.max_iters == expected_iters
    assert runner.iter == expected_iters
    assert not torch.equal(runner.model.linear.weight, weight_before)


@pytest.mark.parametrize('kwargs', [dict(max_iters=3, max_epochs=1), dict()])
def test_train_loop_rejects_both_or_neither(tmp_path, kwargs):
    runner = build_runner(tmp_path, dict(type=TrainLoop, **kwargs))
    with pytest.raises(ValueError, match='exactly one of'):
        runner.train()
