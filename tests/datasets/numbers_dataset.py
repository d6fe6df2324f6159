"""A dataset of numbers whose bad rows raise, for the skip-counting tests; its own module so that
spawned DataLoader workers import little (this module, not the whole test file)."""
from omg_llava.datasets.base import SkippingDataset
from omg_llava.datasets.sample import MalformedSample


class Numbers(SkippingDataset):
    """Rows 0..n-1; a row divisible by 3 fails with ZeroDivisionError, row 5 with
    MalformedSample."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.records = list(range(n))

    def load_record(self, index: int) -> int:
        if index == 5:
            raise MalformedSample(f'bad number: {index}')
        return 1 // (index % 3)


def first(batch: list):
    """A collate function that unwraps a batch of one."""
    return batch[0]
