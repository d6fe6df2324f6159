"""Training-engine pieces missing from xtuner 0.1.11."""
from .cpu_runner import CPUDataParallelRunner
from .train_loop import TrainLoop

__all__ = ['CPUDataParallelRunner', 'TrainLoop']
