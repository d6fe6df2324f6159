"""Evaluate OMG-LLaVA on a benchmark split (spec §9.3): referring segmentation, GCG, region
captioning, or closed region questions (the synthetic shapes' held-out manifest).

    python tools/test.py CONFIG --pth FILE --task refseg --data-root data/ref_seg \\
        --dataset refcoco --split val
    python tools/test.py CONFIG --pth FILE --task gcg --data-root data/glamm_data/annotations \\
        --dataset gcg_val_test --split val
    python tools/test.py CONFIG --pth FILE --task region_caption --data-root data/region_caption \\
        --dataset refcocog --split val
    python tools/test.py CONFIG --pth FILE --task region_qa --data-root data/synthetic_shapes \\
        --split val
    python tools/test.py --task region_qa --data-root data/synthetic_shapes \\
        --split val  # the built-in tiny model
    torchrun --nproc-per-node 8 tools/test.py CONFIG --pth FILE ... --launcher pytorch --device cuda

Writes predictions.jsonl and metrics.json to --out-dir (default
work_dirs/test/<task>_<dataset>_<split>/) and prints the metrics. Each prediction is appended to
predictions.jsonl as it is made; run the same command again after an interruption and only the
missing samples are predicted (--no-resume starts over). A sample that fails (missing image, bad
annotation) is listed under "failures" in metrics.json; the scores are over the others. --protocol
reference gives the released scripts' numbers, corrected (default) the project's definitions. Data
layouts, metric definitions and both protocols: docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from omg_llava.cli_errors import (OneLineParser, UsageError, add_precision_options, check_device,
                                  check_file,
                                  check_out_dir, check_quantization_device, check_weight_file,
                                  one_line_errors, quantization_of)
from omg_llava.config_paths import config_argument
from omg_llava.inference.defaults import DEFAULT_CONFIG, checkpoint_for

TASKS = ('refseg', 'gcg', 'region_caption', 'region_qa')
# omg_llava.evaluation.runner.PROTOCOLS (imported late: the CLI stays light)
PROTOCOLS = ('corrected', 'reference')


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG, type=config_argument,
                        help='model config: a path or a built-in name, e.g. '
                             f'omg_llava_7b_finetune_8gpus (default {DEFAULT_CONFIG}, the built-in '
                             'tiny model)')
    parser.add_argument('--pth',
                        help='OMG-LLaVA checkpoint (.pth); default: the committed one for the '
                        'default config, as chat and app; for any other config none (the '
                        'projectors/LoRA are random)')
    parser.add_argument('--task', required=True, choices=TASKS, help='evaluation task')
    parser.add_argument('--protocol', choices=PROTOCOLS, default='corrected',
                        help='corrected (default): the project\'s metric definitions; reference: '
                             'the released scripts\' numbers, quirks included (docs/evaluation.md)')
    parser.add_argument('--data-root', required=True,
                        help='annotation root (see docs/evaluation.md)')
    parser.add_argument('--dataset',
                        help='refseg: refcoco, refcoco+ (refcoco_plus), refcocog; gcg: the folder '
                             'of the {split}_gcg_coco_*_gt.json files; region_caption: e.g. '
                             'refcocog; region_qa: none (it reads '
                             '<data-root>/region_questions_<split>.json)')
    parser.add_argument('--split', required=True, help='e.g. val, testA, testB, test')
    parser.add_argument('--split-by',
                        help='refseg: refs(<split-by>).p (default unc, umd for refcocog)')
    parser.add_argument('--image-folder',
                        help='image root (default: the reference tree next to --data-root)')
    parser.add_argument('--omg-seg-pth', help='OMG-Seg head file (overrides the config)')
    parser.add_argument('--clip-pth', help='CLIP trunk file (overrides the config)')
    parser.add_argument('--class-embed-pth', help='class-embedding file (overrides the config)')
    parser.add_argument('--out-dir', help='default work_dirs/test/<task>_<dataset>_<split>/')
    parser.add_argument('--no-resume', action='store_true',
                        help='start over instead of keeping the predictions already in --out-dir')
    parser.add_argument('--device', help='torch device (default cuda if available, else cpu)')
    parser.add_argument('--dtype', choices=('auto', 'fp32', 'fp16', 'bf16'), default='auto',
                        help='LLM/projector dtype (auto: bf16, or fp16 with --load-in-4bit/8bit on '
                             'GPU, the reference\'s compute dtype)')
    add_precision_options(parser)
    parser.add_argument('--max-samples', type=int,
                        help='evaluate only the first N samples of the split')
    parser.add_argument('--max-new-tokens', type=int,
                        help='generation budget (default the protocol\'s: refseg 100, gcg 100, '
                             'region_caption 300)')
    parser.add_argument('--phrase-model',
                        help='gcg: local Hugging Face encoder folder (e.g. bert-base-uncased) for '
                             'the phrase similarity of the recall; default: offline bag-of-words '
                             'cosine')
    parser.add_argument('--no-meteor', action='store_true',
                        help='skip METEOR (it needs java and loads slowly)')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load weight files with the full unpickler (only for files you trust)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of random weights (when files are missing)')
    parser.add_argument('--launcher', choices=('none', 'pytorch'), default='none',
                        help='pytorch: distributed under torchrun (samples sharded by rank)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    args.pth = checkpoint_for(args.config, args.pth)
    if args.task == 'region_qa':
        if args.dataset:
            parser.error('--dataset does not apply to --task region_qa (it reads '
                         '<data-root>/region_questions_<split>.json)')
        args.dataset = 'synthetic'
    elif not args.dataset:
        parser.error(f'--task {args.task} needs --dataset')
    if args.max_samples is not None and args.max_samples < 1:
        parser.error('--max-samples must be ≥ 1')
    return args


def _setup_distributed(launcher: str, device: str | None) -> tuple[int, int, str]:
    import torch
    from mmengine.dist import get_dist_info, init_dist

    if launcher == 'pytorch':
        if torch.cuda.is_available():
            init_dist('pytorch', backend='nccl')  # also selects the GPU of LOCAL_RANK
        else:  # mmengine's init_dist calls torch.cuda.set_device, which a CPU build refuses
            torch.distributed.init_process_group('gloo')
    rank, world_size = get_dist_info()
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and world_size > 1:
        device = f'cuda:{torch.cuda.current_device()}'  # init_dist sets it from LOCAL_RANK
    return rank, world_size, device


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    """Evaluate; 0 when the metrics were written (see metrics.json), 2 for a bad input."""
    args = parse_args(argv)
    quantization = quantization_of(args)
    if args.device is not None:
        check_quantization_device(quantization, args.device)
    check_file(args.config, 'config')
    for flag, path in (('--pth', args.pth), ('--omg-seg-pth', args.omg_seg_pth),
                       ('--clip-pth', args.clip_pth), ('--class-embed-pth', args.class_embed_pth)):
        if path:
            check_weight_file(path, flag)
    if args.device is not None:
        check_device(args.device)
    out_dir = args.out_dir or os.path.join('work_dirs', 'test',
                                           f'{args.task}_{args.dataset}_{args.split}')
    check_out_dir(out_dir)
    # before the evaluation imports (torch): a typo answers at once
    if not os.path.isdir(args.data_root):
        state = 'is a file, not a folder' if os.path.exists(args.data_root) else 'not found'
        raise UsageError(f'--data-root {args.data_root} {state}: give the annotation root of '
                         f'--task {args.task} (layouts in docs/evaluation.md)')

    from omg_llava.utils.imports import skip_deepspeed_import
    skip_deepspeed_import()  # before mmengine: inference never uses it
    from omg_llava.evaluation.gcg import TransformerPhraseSimilarity, bag_of_words_cosine
    from omg_llava.evaluation.runner import (MAX_NEW_TOKENS, ModelPredictor, evaluate,
                                             read_predictions)
    from omg_llava.evaluation.splits import load_split
    from omg_llava.inference.chat import OMGLLaVAChat

    split = load_split(args.task, args.data_root, args.dataset, args.split, args.image_folder,
                       args.split_by)
    if not args.no_resume:
        # predictions of another split or protocol: refused now
        read_predictions(out_dir, split, args.protocol)
    rank, world_size, device = _setup_distributed(args.launcher, args.device)
    check_quantization_device(quantization, device)
    dtype = args.dtype if args.dtype != 'auto' else \
        'fp16' if quantization in ('4bit', '8bit') else 'bf16'
    chat, notes = OMGLLaVAChat.from_config(args.config, pth=args.pth, device=device, dtype=dtype,
                                           seed=args.seed, weights_only=not args.trust_checkpoint,
                                           omg_seg=args.omg_seg_pth, clip=args.clip_pth,
                                           class_embed=args.class_embed_pth,
                                           quantization=quantization,
                                           encoder_dtype=args.encoder_dtype)
    predictor = ModelPredictor(chat, args.max_new_tokens or MAX_NEW_TOKENS[args.task])
    similarity = bag_of_words_cosine
    if args.phrase_model and args.task == 'gcg':
        similarity = TransformerPhraseSimilarity(args.phrase_model, device=device)
    if rank == 0:
        print(f'{args.task} on {args.dataset} {args.split}: {len(split.samples)} samples'
              + (f' (first {args.max_samples})' if args.max_samples else '')
              + f', {world_size} process(es), {device} {dtype}, LLM quantization {quantization}, '
                f'protocol {args.protocol}')
        for note in notes:
            print(f'  {note}')
    predict = {'region_caption': predictor.describe_region,
               'region_qa': predictor.answer_with_regions}.get(args.task, predictor)
    metrics = evaluate(split, predict, out_dir, max_samples=args.max_samples, rank=rank,
                       world_size=world_size, progress=not args.no_progress,
                       similarity=similarity, meteor=not args.no_meteor, protocol=args.protocol,
                       resume=not args.no_resume)
    if metrics is not None:
        print(json.dumps({k: v for k, v in metrics.items() if k != 'failures'}, indent=2))
        for failure in metrics['failures'][:5]:
            print(f'failed: sample {failure["index"]} ({failure["image"]}): {failure["error"]}',
                  file=sys.stderr)
        if metrics['num_failed']:
            print(f'warning: {metrics["num_failed"]} sample(s) failed and are not scored (all '
                  f'listed in {os.path.join(out_dir, "metrics.json")}); fix them and run again: '
                  'only they are predicted',
                  file=sys.stderr)
        print(f'predictions and metrics written to {out_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
