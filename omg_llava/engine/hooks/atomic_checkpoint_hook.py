"""mmengine's checkpoint hook, with saves that a kill cannot turn into nothing to resume.

mmengine's ``CheckpointHook`` deletes the checkpoints beyond ``max_keep_ckpts`` *before* it writes
the new one, writes that one in place, and then points ``last_checkpoint`` at it. A kill during the
write (``max_keep_ckpts=1``, the tiny synthetic configs) leaves a half-written ``iter_30.pth`` while
``last_checkpoint`` names the already-deleted ``iter_20.pth``: nothing can be resumed. This hook
orders the same steps so that every moment leaves a complete checkpoint named in
``last_checkpoint``:

1. the checkpoint is written under a temporary name in the same folder (``.iter_30.pth.<pid>.tmp``);
2. it is synced to disk and renamed to ``iter_30.pth`` (:func:`omg_llava.utils.atomic.publish`);
3. ``last_checkpoint`` is rewritten the same way (temporary file, sync, rename);
4. only then are the checkpoints beyond ``max_keep_ckpts`` deleted.

Temporaries a killed run left behind are deleted when the next run starts. Every OMG-LLaVA config
uses this hook (``default_hooks.checkpoint``); it takes the arguments of mmengine's
``CheckpointHook``.
"""
from __future__ import annotations

import os
import os.path as osp
import shutil

from mmengine.dist import barrier, broadcast_object_list, is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook

from omg_llava.registry import HOOKS
from omg_llava.utils.atomic import (atomic_write_text, publish, remove_stale_temporaries,
                                    temporary_path)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """:class:`~mmengine.hooks.CheckpointHook` whose interval / last saves are atomic (see the
    module docstring).

    Saves to a non-local backend (``backend_args`` naming e.g. Petrel) cannot be renamed atomically
    and go through mmengine's own order. ``save_best`` checkpoints keep mmengine's order too (no
    OMG-LLaVA config uses them).
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        writer = [os.getpid()]
        # every rank names the temporary after the main process (DeepSpeed saves)
        broadcast_object_list(writer)
        self._writer_pid = writer[0]
        if is_main_process() and self._is_local and osp.isdir(self.out_dir):
            for path in remove_stale_temporaries(self.out_dir):
                runner.logger.info(f'removed {path}, the unfinished save of an interrupted run')

    @property
    def _is_local(self) -> bool:
        return isinstance(self.file_backend, LocalBackend)

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        if not self._is_local:
            super()._save_checkpoint_with_step(runner, step, meta)
            return
        outdated = self._track(runner, step)
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        temporary = temporary_path(self.last_ckpt, pid=self._writer_pid)
        try:
            runner.save_checkpoint(self.out_dir, osp.basename(temporary), self.file_client_args,
                                   save_optimizer=self.save_optimizer,
                                   save_param_scheduler=self.save_param_scheduler, meta=meta,
                                   by_epoch=self.by_epoch,
                                   backend_args=self.backend_args, **self.args)
            barrier()  # a DeepSpeed save is written by every rank
            if not is_main_process():
                return
            publish(temporary, self.last_ckpt)
        except BaseException:
            if is_main_process():
                self._remove(temporary)
            raise
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old_step in outdated:
            self._remove(osp.join(self.out_dir, self.filename_tmpl.format(old_step)))

    def _track(self, runner, step: int) -> list[int]:
        """Record ``step`` among the kept checkpoints (as mmengine does, also in the message hub
        that the checkpoint stores) and return the steps that fall out of ``max_keep_ckpts``;
        nothing is deleted yet."""
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            return []
        outdated = []
        while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
            outdated.append(self.keep_ckpt_ids.popleft())
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        return outdated

    @staticmethod
    def _remove(path: str) -> None:
        if osp.isdir(path):  # DeepSpeed checkpoints are folders
            shutil.rmtree(path)
        elif osp.isfile(path):
            os.remove(path)


__all__ = ['AtomicCheckpointHook']
