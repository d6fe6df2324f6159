"""Training-engine pieces missing from xtuner 0.1.11."""
from .train_loop import TrainLoop

__all__ = ['TrainLoop']
