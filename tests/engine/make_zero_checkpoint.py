"""Write a real DeepSpeed ZeRO-2 checkpoint of the tiny model (run in a subprocess by
test_convert.py).

    python make_zero_checkpoint.py CONFIG OUT_DIR EXPECTED_PTH

Single process on the CPU with the gloo backend (the parent sets ``DS_ACCELERATOR=cpu`` and the
rendezvous variables), so the distributed state never leaks into the test process. The trainable
tensors are perturbed, one AdamW step is taken through the engine, and the checkpoint is saved the
way mmengine's DeepSpeed strategy saves it for xtuner (``OUT_DIR/iter_1.pth/``, no ``latest`` file,
frozen parameters excluded). ``EXPECTED_PTH`` receives the model's released-format state dict after
the step.
"""
import importlib
import sys

import deepspeed
import torch
from mmengine.config import Config

from omg_llava.registry import build_component

# DeepSpeed JIT-compiles a shared-memory collective for the CPU backend (~30 s); gloo alone is
# enough here. (``deepspeed.comm.torch`` as an attribute is the torch library, hence importlib.)
importlib.import_module('deepspeed.comm.torch').build_shm_op = lambda: None


def main(config: str, out_dir: str, expected_path: str) -> None:
    torch.manual_seed(0)
    model = build_component(Config.fromfile(config).model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in trainable:
            p.add_(torch.randn_like(p))
    deepspeed.init_distributed(dist_backend='gloo')
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(trainable, lr=1e-2),
        config=dict(train_micro_batch_size_per_gpu=1, gradient_clipping=1.0,
                    zero_optimization=dict(stage=2)))
    loss = sum(p.square().mean() for p in trainable)
    engine.backward(loss)
    engine.step()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, expected_path)
    engine.save_checkpoint(out_dir, tag='iter_1.pth', save_latest=False,
                           exclude_frozen_parameters=True)


if __name__ == '__main__':
    main(*sys.argv[1:4])
