"""Training-engine pieces missing from xtuner 0.1.11. Importing it (every training config does) lets
``--resume`` load mmengine checkpoints with torch's safe loader (:mod:`.checkpoint_types`)."""
from .checkpoint_types import allow_mmengine_checkpoint_types
from .cpu_runner import CPUDataParallelRunner
from .train_loop import TrainLoop

__all__ = ['CPUDataParallelRunner', 'TrainLoop']

allow_mmengine_checkpoint_types()
