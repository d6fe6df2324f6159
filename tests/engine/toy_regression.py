"""A linear regression for runner tests, importable by configs run in a subprocess (``tests/engine``
on the path)."""
import torch
from mmengine.model import BaseModel
from torch.utils.data import Dataset


class ToyRegressionDataset(Dataset):
    """16 samples: inputs (3,) from a fixed generator, target = a fixed linear function plus the
    index."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(16, 3, generator=generator)
        self.targets = self.inputs @ torch.tensor([1.0, -2.0, 0.5]) + torch.arange(16.0) / 16

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict:
        return dict(inputs=self.inputs[index], target=self.targets[index:index + 1])


class ToyRegression(BaseModel):
    """Linear(3, 1) initialised to zeros, mean-squared-error loss."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, inputs, target, mode='tensor'):
        prediction = self.linear(inputs)  # (B, 1)
        if mode == 'loss':
            return dict(loss=torch.nn.functional.mse_loss(prediction, target))
        return prediction
