"""Data-parallel training on the CPU cores of one machine (``torchrun`` + gloo).

Why it exists: on a 2-core machine without a GPU, two training processes of one thread each get
through more images per second than one process of two threads (the tiny recipe's steps are many
small operations, which a second thread hardly speeds up; measured in docs/tiny_model.md,
"Compute"). mmengine's launcher path assumes an accelerator: its ``init_dist`` calls
``torch.cuda.set_device`` and its default DDP wrapper passes ``device_ids=[LOCAL_RANK]``, both of
which fail with a CPU-only torch. This runner does those two steps the CPU way and is an ordinary
:class:`~mmengine.runner.Runner` otherwise (not launched, or launched where CUDA exists).

Usage (2 processes, one thread each; ``train_dataloader.batch_size`` is per process)::

    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        -m xtuner.tools.train CONFIG --launcher pytorch

with ``runner_type = CPUDataParallelRunner`` and ``env_cfg.dist_cfg.backend = 'gloo'`` in the
config.
"""
from __future__ import annotations

import torch
import torch.distributed as torch_dist
from mmengine.dist import is_distributed
from mmengine.model import MMDistributedDataParallel
from mmengine.runner import Runner

from omg_llava.registry import RUNNERS


@RUNNERS.register_module()
class CPUDataParallelRunner(Runner):
    """:class:`~mmengine.runner.Runner` that also trains data-parallel on CPU processes (gloo).

    When launched (``--launcher pytorch``) on a machine without CUDA it initialises the process
    group itself, with the config's ``env_cfg.dist_cfg`` (the backend must be ``gloo``: NCCL needs
    GPUs), and wraps the model in DDP without ``device_ids``. ``find_unused_parameters`` (a
    top-level config key, as for mmengine's Runner) is passed on: set it when some parameters get no
    gradient in a step (e.g. a loss that only some batches have).
    """

    #: whether :meth:`setup_env` opened the process group (then :meth:`train` closes it)
    owns_process_group = False

    def setup_env(self, env_cfg: dict) -> None:
        if self.distributed and not is_distributed() and not torch.cuda.is_available():
            dist_cfg = dict(env_cfg.get('dist_cfg', {}))
            backend = dist_cfg.pop('backend', 'gloo')
            if backend != 'gloo':
                raise ValueError('data-parallel training on CPU needs '
                                 f'env_cfg.dist_cfg.backend="gloo", got {backend!r} (NCCL needs '
                                 'GPUs)')
            torch_dist.init_process_group(backend='gloo', **dist_cfg)
            self.owns_process_group = True
        super().setup_env(env_cfg)

    def train(self) -> torch.nn.Module:
        """:meth:`Runner.train`, then the process group this runner opened is destroyed (also when
        training fails). Left to the interpreter's exit, gloo's threads were once torn down while
        running after a finished stage had written its output ("terminate called without an active
        exception", SIGABRT), and torchrun reported the stage as failed."""
        try:
            return super().train()
        finally:
            if self.owns_process_group and torch_dist.is_initialized():
                torch_dist.destroy_process_group()

    def wrap_model(self, model_wrapper_cfg: dict | None, model: torch.nn.Module) -> torch.nn.Module:
        if not self.distributed or model_wrapper_cfg is not None or torch.cuda.is_available():
            return super().wrap_model(model_wrapper_cfg, model)
        return MMDistributedDataParallel(
            module=model,
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=self.cfg.get('find_unused_parameters', False),
        )
