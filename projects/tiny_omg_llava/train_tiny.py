"""Reproduce the trained tiny OMG-LLaVA (the built-in default) from nothing, on CPU, and measure it.

    python projects/tiny_omg_llava/train_tiny.py            # ~30 min on 2 CPU cores (2 processes)
    python projects/tiny_omg_llava/train_tiny.py --install  # ... and replace the committed files
    python projects/tiny_omg_llava/train_tiny.py --short    # the few-minute CI version

Steps (each one a command a user could type; the script only chains them and times them):

1. ``synthetic_shapes.py`` writes the synthetic grounding data (train / held-out val / testA) into
   ``WORK_DIR/data/synthetic_shapes`` (the training steps run in WORK_DIR, where the configs'
   ``./data/`` points).
2. ``xtuner train configs/tiny/llm_tiny_synthetic.py``: the language stage; its
   ``ExportStageOutputHook`` writes the LLM as a Hugging Face folder ``llm/`` (the tiny stand-in for
   ``internlm2-chat-7b``).
3. ``xtuner train configs/tiny/omg_seg_tiny_synthetic.py``: the OMG-Seg pre-stage; its
   ``ExportStageOutputHook`` writes the encoder in the released file formats (``omg_seg.pth``,
   ``clip_trunk.safetensors``, ``class_embed.pth``).
4. ``xtuner train configs/tiny/omg_llava_tiny_synthetic_pretrain.py`` on that (frozen) encoder,
   training the projectors and the LLM (where the LLM learns to read the image), then
   ``tools/convert_to_pth.py`` → ``omg_llava_tiny_synthetic_pretrain.pth``.
5. ``xtuner train configs/tiny/omg_llava_tiny_synthetic_finetune.py`` from it, then
   ``tools/convert_to_pth.py`` → the released-format ``omg_llava_tiny_synthetic.pth``.
6. ``tools/test.py``: referring segmentation (cIoU, gIoU) and closed region questions on the
   held-out val images; ``prompt_qa.py``: colour and shape questions about point, box and mask
   prompts (per-kind table).
7. ``benchmark.py``: the figures and the training curves (PNG) of this work dir.

``--install`` copies the weight files and the LLM folder into ``omg_llava/assets/tiny_synthetic/``
(what the tiny synthetic config, ``tools/chat.py`` and ``tools/app.py`` load by default).
``--short`` trains far less (the CI test uses it) and never installs. ``--committed-stages`` runs
steps 1 and 4-7 only, on the committed outputs of steps 2-3 (the language-stage LLM and the encoder
of ``omg_llava/assets/tiny_synthetic/``); ``--committed-encoder`` skips step 3 only.
``--name-binding`` trains the name-binding variant (issue 26; not installable): ``name_binding.py``
(the LLM learns to look up a name's value from text rows, checked) before the language stage, and
the ``*_name_binding.py`` configs for steps 2, 4 and 5 (binding rows kept in their mixtures).
``--processes`` (default 2 on 2 or more cores) runs each training stage data-parallel
over that many CPU processes with the same batch per step (``CPUDataParallelRunner``,
docs/training.md).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

# what the language stage writes
from omg_llava.models.language_model_trainer import LANGUAGE_MODEL_FOLDER
from omg_llava.models.omg_seg_trainer import ENCODER_FILES  # what the pre-stage writes

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = dict(language='configs/tiny/llm_tiny_synthetic.py',
               omg_seg='configs/tiny/omg_seg_tiny_synthetic.py',
               pretrain='configs/tiny/omg_llava_tiny_synthetic_pretrain.py',
               finetune='configs/tiny/omg_llava_tiny_synthetic_finetune.py')
#: the name-binding variant's configs (--name-binding)
NAME_BINDING_CONFIGS = dict(
    CONFIGS, language='configs/tiny/llm_tiny_synthetic_name_binding.py',
    pretrain='configs/tiny/omg_llava_tiny_synthetic_pretrain_name_binding.py',
    finetune='configs/tiny/omg_llava_tiny_synthetic_finetune_name_binding.py')
ASSET_DIR = os.path.join(REPO_ROOT, 'omg_llava', 'assets', 'tiny_synthetic')
CHECKPOINT_NAME = 'omg_llava_tiny_synthetic.pth'
PRETRAIN_CHECKPOINT_NAME = 'omg_llava_tiny_synthetic_pretrain.pth'

#: images per split, iterations per stage, evaluated samples (None: the whole val split)
#: --name-binding only: name_binding.py's steps per part and part-1 tries (the short run keeps its
#: one try whatever it reads), and the language stage's length
FULL = dict(train=6000, val=100, test=50, language_iters=600, pre_iters=3000, pretrain_iters=2500,
            finetune_iters=3500, refseg_samples=None, qa_samples=None, prompt_images=50,
            binding_iters=(1000, 1500), binding_tries=6, binding_language_iters=1000)
SHORT = dict(train=300, val=20, test=5, language_iters=200, pre_iters=800, pretrain_iters=60,
             finetune_iters=500, refseg_samples=60, qa_samples=60, prompt_images=5,
             binding_iters=(100, 100), binding_tries=1, binding_language_iters=200)


def run_stage(name: str, command: list[str], timings: dict, log_dir: str, cwd: str = REPO_ROOT,
              threads: int | None = None, finished=None) -> None:
    """Run one step as a subprocess (output to ``log_dir/<name>.log``), record its wall time and
    peak memory; ``threads`` sets OMP_NUM_THREADS for it. A step that exits with an error but
    whose ``finished()`` says its outputs are complete (a crash while the processes shut down)
    counts as done, with a warning."""
    print(f'[{name}] {" ".join(command)}', flush=True)
    env = dict(os.environ, **({'OMP_NUM_THREADS': str(threads)} if threads else {}))
    start = time.perf_counter()
    with open(os.path.join(log_dir, f'{name}.log'), 'w', encoding='utf-8') as log:
        result = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    # ru_maxrss of the children is the largest so far (KiB on Linux): a step's own peak when it is
    # the largest.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    timings[name] = dict(seconds=round(seconds, 1), peak_rss_mib_so_far=round(peak))
    print(f'[{name}] {"done" if result.returncode == 0 else "FAILED"} in {seconds:.0f} s',
          flush=True)
    if result.returncode != 0 and finished is not None and finished():
        print(f'[{name}] warning: exit {result.returncode} after its outputs were complete (end of '
              f'{log_dir}/{name}.log); going on', flush=True)
    elif result.returncode != 0:
        with open(os.path.join(log_dir, f'{name}.log'), encoding='utf-8') as log:
            tail = log.read()[-3000:]
        raise SystemExit(f'step {name} failed (exit {result.returncode}); end of '
                         f'{log_dir}/{name}.log:\n{tail}')


def stage_finished(stage_dir: str, iters: int) -> bool:
    """Whether an ``xtuner train`` work dir holds its final checkpoint (``last_checkpoint`` naming
    ``iter_<iters>.pth``, present) and, for the stages that export (the language stage's ``llm/``,
    the pre-stage's encoder files), what they export."""
    try:
        with open(os.path.join(stage_dir, 'last_checkpoint'), encoding='utf-8') as f:
            last = f.read().strip()
    except OSError:
        return False
    exported = {'language': [os.path.join(LANGUAGE_MODEL_FOLDER, 'config.json')],
                'omg_seg': list(ENCODER_FILES.values())}.get(os.path.basename(stage_dir), [])
    return (os.path.basename(last) == f'iter_{iters}.pth' and os.path.isfile(last)
            and all(os.path.isfile(os.path.join(stage_dir, name)) for name in exported))


def default_processes() -> int:
    """Training processes per stage: 2 where there are at least 2 cores (one thread each: faster
    than one process with two threads, docs/tiny_model_history.md "Compute"), else 1."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def xtuner_train(config: str, processes: int) -> list[str]:
    """The ``xtuner train`` command of a config, data-parallel over ``processes`` CPU processes when
    > 1 (``torchrun`` + gloo, omg_llava/engine/cpu_runner.py); ``--cfg-options`` go after it."""
    if processes == 1:
        return [sys.executable, '-m', 'xtuner.tools.train', config]
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone',
            f'--nproc_per_node={processes}',
            '-m', 'xtuner.tools.train', config, '--launcher', 'pytorch']


def per_process_batch(config: str, processes: int) -> list[str]:
    """--cfg-options that split a config's batch over ``processes`` (mmengine batch sizes are per
    process), so that every recipe trains on the same number of samples per step whatever the
    process count."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    loader = cfg.train_dataloader
    per_batch = {'train_dataloader.batch_size': loader.batch_size,
                 'train_dataloader.sampler.per_device_batch_size':
                     loader.sampler.get('per_device_batch_size')}
    # TextOnlyLMLoss(rows=k): k per batch
    for i, term in enumerate(cfg.model.get('auxiliary_losses', ())):
        per_batch[f'model.auxiliary_losses.{i}.rows'] = term.get('rows')
    options = []
    for key, value in per_batch.items():
        if not value or processes == 1:
            continue
        if value % processes:
            raise SystemExit(f'{key}={value} in {config} does not split over {processes} '
                             f'processes; use --processes with a divisor of it')
        options.append(f'{key}={value // processes}')
    return options


def _iterations(n: int) -> list[str]:
    """--cfg-options that shorten or lengthen a config's schedule (loop end and cosine end) to ``n``
    iterations."""
    return [f'train_cfg.max_iters={n}', f'param_scheduler.1.end={n}']


def train(work_dir: str, plan: dict, processes: int = 1, committed_stages: bool = False,
          committed_encoder: bool = False, name_binding: bool = False) -> dict:
    """Steps 1-5 into ``work_dir``, each training stage on ``processes`` CPU processes; returns the
    timings (also written to ``work_dir/timings.json``). ``committed_stages`` skips steps 2-3 and
    takes their outputs from ``omg_llava/assets/tiny_synthetic/`` (the committed language-stage LLM
    and encoder); ``committed_encoder`` skips step 3 only; ``name_binding`` trains the name-binding
    variant (module docstring).

    The training steps run with ``work_dir`` as working directory, so the configs'
    ``./data/synthetic_shapes/`` is ``work_dir/data/synthetic_shapes/``."""
    py = sys.executable
    logs = os.path.join(work_dir, 'logs')
    os.makedirs(logs, exist_ok=True)
    data_root = os.path.join(work_dir, 'data', 'synthetic_shapes')
    configs = NAME_BINDING_CONFIGS if name_binding else CONFIGS
    config = {name: os.path.join(REPO_ROOT, path) for name, path in configs.items()}
    timings: dict = {}
    threads = max(1, (os.cpu_count() or 1) // processes)
    with open(os.path.join(work_dir, 'plan.json'), 'w', encoding='utf-8') as f:
        json.dump(dict(plan, processes=processes, threads_per_process=threads), f, indent=2)

    def run_training(step: str, stage: str, iters: int, extra: list[str]) -> None:
        """One training stage (its work dir ``work_dir/<stage>``) as the timed step ``step``."""
        command = xtuner_train(config[stage], processes) + ['--work-dir', stage, '--cfg-options',
                                                            *_iterations(iters),
                                                            *per_process_batch(config[stage],
                                                                               processes), *extra]
        run_stage(step, command, timings, logs, cwd=work_dir, threads=threads,
                  finished=lambda: stage_finished(os.path.join(work_dir, stage), iters))

    run_stage('data',
              [py, os.path.join(REPO_ROOT, 'projects/tiny_omg_llava/synthetic_shapes.py'), '--root',
                       data_root, '--train', str(plan['train']), '--val', str(plan['val']),
               '--test',
                       str(plan['test'])], timings, logs)
    llm_dir = os.path.join(work_dir, LANGUAGE_MODEL_FOLDER)
    committed_encoder = committed_encoder or committed_stages
    encoder_dir = ASSET_DIR if committed_encoder else os.path.join(work_dir, 'omg_seg')
    if committed_stages:
        shutil.copytree(os.path.join(ASSET_DIR, LANGUAGE_MODEL_FOLDER), llm_dir, dirs_exist_ok=True)
    elif name_binding:
        binding_dir = os.path.join(work_dir, 'name_binding')
        run_stage('name_binding',
                  [py, os.path.join(REPO_ROOT, 'projects/tiny_omg_llava/name_binding.py'),
                   '--data-root', data_root, '--out', binding_dir, '--iters',
                   *map(str, plan['binding_iters']), '--tries', str(plan['binding_tries'])],
                  timings, logs)
        binding_llm = os.path.join(binding_dir, LANGUAGE_MODEL_FOLDER)
        run_training('language_stage', 'language', plan['binding_language_iters'],
                     [f'model.llm.pretrained_model_name_or_path={binding_llm}'])
    else:
        run_training('language_stage', 'language', plan['language_iters'], [])
    if not committed_stages:
        shutil.copytree(os.path.join(work_dir, 'language', LANGUAGE_MODEL_FOLDER), llm_dir,
                        dirs_exist_ok=True)
    if not committed_encoder:
        run_training('omg_seg_pre_stage', 'omg_seg', plan['pre_iters'], [])
    stage_inputs = ([f'model.visual_encoder.weights.{k}={os.path.join(encoder_dir, name)}'
                     for k, name in ENCODER_FILES.items()]
                    + [f'model.llm.pretrained_model_name_or_path={llm_dir}'])
    pretrain_pth = os.path.join(work_dir, PRETRAIN_CHECKPOINT_NAME)
    checkpoint = os.path.join(work_dir, CHECKPOINT_NAME)
    for stage, iters, extra, output in (
            ('pretrain', plan['pretrain_iters'], [], pretrain_pth),
            ('finetune', plan['finetune_iters'], [f'model.pretrained_pth={pretrain_pth}'],
             checkpoint)):
        run_training(stage, stage, iters, [*stage_inputs, *extra])
        with open(os.path.join(work_dir, stage, 'last_checkpoint'), encoding='utf-8') as f:
            last = f.read().strip()
        run_stage(f'convert_{stage}',
                  [py, 'tools/convert_to_pth.py', config[stage], last, '--save-path', output,
                                       '--trust-checkpoint'], timings, logs)
    for name in ENCODER_FILES.values():
        shutil.copy(os.path.join(encoder_dir, name), os.path.join(work_dir, name))
    weights = ['--pth', checkpoint] + [f'--{k.replace("_", "-")}-pth={os.path.join(work_dir, name)}'
                                       for k, name in ENCODER_FILES.items()]
    images = os.path.join(data_root, 'glamm_data/images/coco2014/train2014')
    for task, extra, limit in (
            ('refseg',
             ['--dataset', 'refcoco', '--data-root', os.path.join(data_root, 'ref_seg'),
              '--image-folder',
                        images], plan['refseg_samples']),
            ('region_qa', ['--data-root', data_root], plan['qa_samples'])):
        command = [py, 'tools/test.py', config['finetune'], *weights, '--task', task, '--split',
                   'val', *extra,
                   '--device', 'cpu', '--no-progress', '--out-dir',
                   os.path.join(work_dir, 'test', task)]
        run_stage(f'test_{task}', command + (['--max-samples', str(limit)] if limit else []),
                  timings, logs)
    prompt_qa = os.path.join(REPO_ROOT, 'projects/tiny_omg_llava/prompt_qa.py')
    run_stage('test_prompt_qa', [py, prompt_qa, '--work-dir', work_dir, '--images',
                                 str(plan['prompt_images'])], timings, logs)
    with open(os.path.join(work_dir, 'timings.json'), 'w', encoding='utf-8') as f:
        json.dump(timings, f, indent=2)
    return timings


def install(work_dir: str) -> None:
    """Copy the trained files into the package (the built-in default)."""
    os.makedirs(ASSET_DIR, exist_ok=True)
    for name in (CHECKPOINT_NAME, *ENCODER_FILES.values()):
        shutil.copy(os.path.join(work_dir, name), os.path.join(ASSET_DIR, name))
    shutil.copytree(os.path.join(work_dir, LANGUAGE_MODEL_FOLDER),
                    os.path.join(ASSET_DIR, LANGUAGE_MODEL_FOLDER), dirs_exist_ok=True)
    print(f'installed {CHECKPOINT_NAME}, the encoder files and the LLM folder into {ASSET_DIR}')


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default='work_dirs/tiny_synthetic',
                        help='where everything is written')
    parser.add_argument('--short', action='store_true',
                        help='the few-minute CI version (never installed)')
    parser.add_argument('--install', action='store_true',
                        help='copy the trained files into omg_llava/assets/')
    parser.add_argument('--committed-stages', action='store_true',
                        help='skip the language stage and the OMG-Seg pre-stage: take the '
                             'committed LLM and encoder from omg_llava/assets/tiny_synthetic/ '
                             '(pretrain and finetune only)')
    parser.add_argument('--committed-encoder', action='store_true',
                        help='skip the OMG-Seg pre-stage only: take the committed encoder from '
                             'omg_llava/assets/tiny_synthetic/')
    parser.add_argument('--name-binding', action='store_true',
                        help='the name-binding variant (issue 26): a binding part before the '
                             'language stage, binding rows in every stage; not installable')
    parser.add_argument('--processes', type=int, default=default_processes(),
                        help='CPU processes per training stage (data-parallel, one share of the '
                             'cores each; the batch per step stays the same); default 2 on 2 or '
                             'more cores, else 1')
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error(f'--processes must be at least 1, got {args.processes}')
    if args.short and args.install:
        parser.error('--short trains a weaker model; it is never installed as the default')
    if args.name_binding and (args.install or args.committed_stages):
        parser.error('--name-binding trains its own language stage with the variant configs; it '
                     'is not installed (the default configs would not match it) and does not take '
                     '--committed-stages')
    plan = SHORT if args.short else FULL
    train(os.path.abspath(args.work_dir), plan, args.processes, args.committed_stages,
          args.committed_encoder, args.name_binding)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from benchmark import report
    figures = report(os.path.abspath(args.work_dir))
    if args.install:
        install(os.path.abspath(args.work_dir))
    return figures


if __name__ == '__main__':
    main()
