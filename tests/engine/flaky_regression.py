"""The toy regression data with unusable rows, for the skipped-row hook tests (its own module, so
that the subprocess runs of ``toy_regression`` do not import the datasets package)."""
from omg_llava.datasets.base import SkippingDataset
from omg_llava.datasets.sample import MalformedSample

from toy_regression import ToyRegressionDataset


class FlakyRegressionDataset(SkippingDataset):
    """:class:`ToyRegressionDataset` whose rows in ``bad`` cannot be used: odd ones raise
    :class:`MalformedSample`, even ones a ``TypeError`` (a number where a string belongs)."""

    def __init__(self, bad=(1, 6, 11)) -> None:
        super().__init__()
        self.samples = ToyRegressionDataset()
        self.records = list(range(len(self.samples)))
        self.bad = set(bad)

    @property
    def source(self) -> str:
        return 'toy.json'

    def load_record(self, index: int) -> dict:
        if index in self.bad:
            if index % 2:
                raise MalformedSample(f'bad sample: row {index}')
            return dict(self.samples[index], text='row ' + index)
        return self.samples[index]
