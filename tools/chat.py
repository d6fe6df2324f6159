"""Chat with OMG-LLaVA about one image: text answers with masks, visual prompts, overlay and JSON
outputs.

    python tools/chat.py \\
        --prompt "Please segment the largest shape in this image."  # built-in default
    python tools/chat.py configs/omg_llava_7b_finetune_8gpus.py \\
        --pth pretrained/omg_llava/omg_llava_7b_finetune_8gpus.pth --device cuda --image photo.jpg
    python tools/chat.py CONFIG --pth FILE --image photo.jpg --prompt "What is <mark> holding?" \\
        --point 410,220
    python tools/chat.py CONFIG --pth FILE --image photo.jpg \\
        --prompt "Compare <region> with <region>." --box 30,40,300,380 --mask dog.png

With --prompt the question is answered once; without it the chat is interactive: one question per
line, `reset` starts a new conversation about the same image, `exit` (or Ctrl-D) quits.

Visual prompts are in original-image pixels (x from the left, y from the top). Each <mark> in the
question takes the next --point; each <region> takes the next --box or --mask, in the order they
appear on the command line. In interactive mode they apply to the first question.

Outputs go to --out-dir (one-shot) or --out-dir/turn_N (interactive): overlay.png, mask_I.png per
[SEG] (I from 0) and answer.json (text, phrases, COCO RLE masks, image and prompts).

Built-in default: the tiny OMG-LLaVA trained on CPU on synthetic coloured shapes
(configs/tiny/omg_llava_tiny_synthetic_finetune.py with the committed
omg_llava/assets/tiny_synthetic/ weights, reproduced by projects/tiny_omg_llava/train_tiny.py) on a
held-out synthetic image. It knows shapes only: ask e.g. "Please segment the red circle in this
image." Any other config without --pth has random weights. See docs/chat.md.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
import warnings

from omg_llava.cli_errors import (TRACEBACK_ENV, OneLineParser, UsageError, add_precision_options,
                                  check_device,
                                  check_file, check_out_dir, check_output_spares_inputs,
                                  check_quantization_device, check_weight_file,
                                  error_message, one_line_errors, quantization_of)
from omg_llava.config_paths import config_argument
from omg_llava.inference.defaults import DEFAULT_CONFIG, DEFAULT_IMAGE, checkpoint_for

MARK, REGION = '<mark>', '<region>'


def _numbers(count: int, flag: str, example: str):
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.replace(' ', '').split(','))
        except ValueError:
            values = ()
        if len(values) != count or not all(map(math.isfinite, values)):
            raise argparse.ArgumentTypeError(f'{flag} takes {count} comma-separated finite '
                                             f'numbers, e.g. {example}; got {text!r}')
        return values
    return parse


def _box(text: str) -> tuple[str, tuple[float, ...]]:
    box = _numbers(4, '--box', '30,40,300,380')(text)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise argparse.ArgumentTypeError('--box is X1,Y1,X2,Y2 with X2 > X1 and Y2 > Y1; got '
                                         f'{text!r}')
    return 'box', box


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG, type=config_argument,
                        help=f'model config: a path or a built-in name (default {DEFAULT_CONFIG})')
    parser.add_argument('--pth',
                        help='OMG-LLaVA checkpoint (released format); default: the committed one '
                        'for the default config, none (random weights) for any other')
    parser.add_argument('--image', default=DEFAULT_IMAGE,
                        help='the image (default: a held-out synthetic image)')
    parser.add_argument('--prompt',
                        help='answer this one question and exit (default: interactive chat)')
    prompts = parser.add_argument_group('visual prompts (original-image pixels)')
    prompts.add_argument('--point', action='append', default=[], metavar='X,Y',
                         type=_numbers(2, '--point', '120,80'),
                         help='a point for the next <mark> (repeatable)')
    prompts.add_argument('--box', action='append', dest='regions', default=[],
                         metavar='X1,Y1,X2,Y2', type=_box,
                         help='a box for the next <region> (repeatable)')
    prompts.add_argument('--mask', action='append', dest='regions', metavar='PNG',
                         type=lambda p: ('mask', p),
                         help='a mask image of the photo size (non-zero = inside) for the next '
                              '<region>; boxes and masks fill <region> in command-line order')
    parser.add_argument('--out-dir', default='outputs/chat',
                        help='where overlay.png, mask_I.png, answer.json go')
    model = parser.add_argument_group('model')
    model.add_argument('--device', default='cpu',
                       help='torch device: cpu, cuda, cuda:1 ... (default cpu)')
    model.add_argument('--dtype', choices=('fp32', 'fp16', 'bf16'),
                       help='LLM and projector dtype (default bf16; fp32 needs twice the memory)')
    model.add_argument('--keep-lora', action='store_true',
                       help='keep the LoRA adapters instead of merging them into the LLM weights '
                            '(slower, more memory; to compare)')
    add_precision_options(model)
    model.add_argument('--attn', choices=('sdpa', 'eager'), default='sdpa',
                       help='LLM attention: sdpa (default, fused) or eager (the reference '
                            'numerics)')
    model.add_argument('--seed', type=int, default=0,
                       help='seed of random weights and of sampling (default 0)')
    model.add_argument('--trust-checkpoint', action='store_true',
                       help='load weight files with the full unpickler (only for files you trust)')
    model.add_argument('--omg-seg-pth', help='omg_seg_convl.pth (overrides the config)')
    model.add_argument('--clip-pth', help='open_clip ConvNeXt-L weights (overrides the config)')
    model.add_argument('--class-embed-pth',
                       help='convnext_large_d_320_CocoPanopticOVDataset.pth (overrides the config)')
    decoding = parser.add_argument_group('decoding')
    decoding.add_argument('--max-new-tokens', type=int, default=512,
                          help='answer length limit (default 512)')
    decoding.add_argument('--temperature', type=float, default=0.0,
                          help='0 = greedy (default); > 0 samples (the reference chat used 0.1)')
    decoding.add_argument('--top-p', type=float, default=0.75,
                          help='nucleus sampling (default 0.75)')
    decoding.add_argument('--top-k', type=int, default=40, help='top-k sampling (default 40)')
    decoding.add_argument('--repetition-penalty', type=float, default=1.0, help='(default 1.0)')
    return parser


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.pth = checkpoint_for(args.config, args.pth)
    import numpy as np
    image, points, regions = _load_inputs(args)
    if args.prompt is not None:
        _check_question(args.prompt, '--prompt')
        _check_counts(args.prompt, points, regions)

    import torch

    # raised inside the visual encoder's deps
    warnings.filterwarnings('ignore', message='torch.meshgrid')
    from omg_llava.utils.imports import skip_deepspeed_import
    skip_deepspeed_import()  # before mmengine: inference never uses it
    from omg_llava.inference.chat import OMGLLaVAChat

    device = check_device(args.device)
    quantization = quantization_of(args)
    check_quantization_device(quantization, device)
    if quantization == 'int8' and args.keep_lora:
        raise UsageError('--quantize int8 needs the LoRA merged into the LLM; drop --keep-lora')
    dtype = args.dtype or 'bf16'
    weights = args.pth or 'none: random weights'
    _log(f'[1/2] building {args.config} on {args.device} ({dtype}, LLM quantization '
         f'{quantization}); OMG-LLaVA weights: {weights} ...')
    start = time.perf_counter()
    chat, notes = OMGLLaVAChat.from_config(
        args.config, pth=args.pth, device=args.device, dtype=dtype, seed=args.seed,
        weights_only=not args.trust_checkpoint, omg_seg=args.omg_seg_pth, clip=args.clip_pth,
        class_embed=args.class_embed_pth, quantization=quantization, merge_lora=not args.keep_lora,
        attn_implementation=args.attn, encoder_dtype=args.encoder_dtype)
    for note in notes:
        _log(f'      {note}')
    if not args.pth:
        _log('      note: without --pth the answers are gibberish and the masks meaningless '
             '(docs/chat.md)')
    _log(f'[2/2] encoding {args.image} ({image.width}x{image.height}) ...')
    chat.set_image(image)
    _log(f'ready in {time.perf_counter() - start:.1f}s')
    torch.manual_seed(args.seed)

    session = _Session(chat, args, np.asarray(image), points, regions)
    if args.prompt is not None:
        # a ValueError (prompt count, too long) is the error line
        session.ask(args.prompt, args.out_dir)
        return 0
    return session.interact()


class _Session:
    """The conversation loop: asks, streams, prints the masks and writes the outputs of each
    turn."""

    def __init__(self, chat, args: argparse.Namespace, image, points, regions) -> None:
        self.chat, self.args, self.image = chat, args, image
        self.pending_points, self.pending_regions = points, regions  # for the first question
        self.ansi = sys.stdout.isatty() and os.environ.get('NO_COLOR') is None
        self.conversation, self.turn = 1, 0

    def ask(self, question: str, out_dir: str) -> None:
        from omg_llava.inference.chat_outputs import PhraseStreamer, describe_masks, write_answer
        args = self.args
        points, regions = self.pending_points, self.pending_regions
        streamer = PhraseStreamer(self.chat.tokenizer, self.chat.model.stop_token_ids,
                                  ansi=self.ansi, prefix='answer: ')
        answer = self.chat.ask(question, points=points, regions=[value for _, value, _ in regions],
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               top_p=args.top_p, top_k=args.top_k,
                               repetition_penalty=args.repetition_penalty, streamer=streamer)
        self.pending_points, self.pending_regions = [], []
        self.turn += 1
        prompts = dict(points=[list(p) for p in points],
                       regions=[{kind: list(v) if kind == 'box' else path}
                                for kind, v, path in regions])
        paths = write_answer(out_dir, answer, self.image, inputs=_input_files(args),
                             image=os.path.abspath(args.image), question=question, prompts=prompts,
                             conversation=self.conversation, turn=self.turn, config=args.config,
                             pth=args.pth, history=[[t.question, t.answer]
                                                    for t in self.chat.history[:-1]])
        if answer.masks:
            print(f'{len(answer.masks)} mask(s):')
            for line in describe_masks(answer, self.ansi):
                print(f'  {line}')
        else:
            print('masks: none (no [SEG] in the answer)')
        print(f'written: {paths["overlay"]}, {paths["json"]}'
              + (f' and {len(paths["masks"])} mask PNG(s)' if paths['masks'] else ''))

    def interact(self) -> int:
        _undecodable_input_as_surrogates()
        if self.pending_points or self.pending_regions:
            print(f'visual prompts for the first question: {len(self.pending_points)} point(s) for '
                  f'<mark>, {len(self.pending_regions)} box/mask(s) for <region>')
        print('one question per line; "reset" starts a new conversation about the same image, '
              '"exit" quits')
        while True:
            try:
                line = input('>>> ').strip()
            except (EOFError, KeyboardInterrupt):
                print()
                return 0
            if not line:
                continue
            if line.lower() in ('exit', 'quit'):
                return 0
            if line.lower() == 'reset':
                self.chat.reset()
                self.conversation += 1
                print('conversation reset (same image)')
                continue
            try:
                self.ask(line, os.path.join(self.args.out_dir, f'turn_{self.turn + 1}'))
            except KeyboardInterrupt:  # Ctrl-C stops this answer (not recorded), not the session
                print('\n(interrupted)')
            except Exception as exc:  # noqa: BLE001 - no question ends the session
                # a bad question is not recorded and its visual prompts stay pending; the chat goes
                # on
                print(f'error: {error_message(exc)}', flush=True)
                if os.environ.get(TRACEBACK_ENV):
                    traceback.print_exc()


def _load_inputs(args: argparse.Namespace):
    """Read and validate everything given on the command line before the (slow) model build."""
    check_file(args.config, 'config')
    for flag, path in (('--pth', args.pth), ('--omg-seg-pth', args.omg_seg_pth),
                       ('--clip-pth', args.clip_pth), ('--class-embed-pth', args.class_embed_pth)):
        if path:
            check_weight_file(path, flag)
    if args.max_new_tokens < 1:
        raise UsageError(f'--max-new-tokens must be at least 1, got {args.max_new_tokens}')
    check_out_dir(args.out_dir)
    check_file(args.image, '--image')  # missing files answer before the image reader imports torch
    for kind, value in args.regions or []:
        if kind == 'mask':
            check_file(value, '--mask')
    from omg_llava.inference.image_io import load_image, load_mask
    try:
        image = load_image(args.image)
    except (OSError, ValueError) as exc:
        raise UsageError(f'--image: {exc}') from exc
    W, H = image.size
    for x, y in args.point:
        if not (0 <= x < W and 0 <= y < H):
            raise UsageError(f'--point {x:g},{y:g} lies outside the {W}x{H} image (x in [0, {W}), '
                             f'y in [0, {H}))')
    regions = []
    for kind, value in args.regions or []:
        if kind == 'box':
            if min(value) < 0 or value[2] > W or value[3] > H:
                raise UsageError(f'--box {",".join(f"{v:g}" for v in value)} leaves the {W}x{H} '
                                 'image')
            regions.append((kind, value, None))
            continue
        try:
            mask = load_mask(value, 'mask')
        except (OSError, ValueError) as exc:
            raise UsageError(f'--mask: {exc}') from exc
        if mask.shape != (H, W):
            raise UsageError(f'--mask {value} is {mask.shape[1]}x{mask.shape[0]} but the image is '
                             f'{W}x{H}')
        regions.append((kind, mask, os.path.abspath(value)))
    _check_outputs_spare_inputs(args)
    return image, [tuple(p) for p in args.point], regions


def _input_files(args: argparse.Namespace) -> list[str]:
    """The files a question reads: the image and the --mask prompts (outputs must never replace
    them)."""
    return [args.image] + [value for kind, value in args.regions or [] if kind == 'mask']


def _check_outputs_spare_inputs(args: argparse.Namespace) -> None:
    """Refuse, before the model build, an --out-dir whose answer files (overlay.png, answer.json,
    mask_I.png, also in turn_N/) are, or link to, an input; write_answer checks each answer's exact
    files again."""
    import glob
    import re
    names = re.compile(r'(overlay\.png|answer\.json|mask_\d+\.png)')
    folder = glob.escape(args.out_dir)
    for path in (glob.glob(os.path.join(folder, '*'))
                 + glob.glob(os.path.join(folder, 'turn_*', '*'))):
        if names.fullmatch(os.path.basename(path)):
            check_output_spares_inputs(path, _input_files(args), '--out-dir: output')


def _check_question(question: str, flag: str) -> None:
    from omg_llava.inference.chat import check_question
    try:
        check_question(question)
    except ValueError as exc:
        raise UsageError(f'{flag}: {exc}') from exc


def _undecodable_input_as_surrogates() -> None:
    """Read stdin bytes that are not valid in its encoding as lone surrogates instead of failing in
    ``input()``: the question holding them is then refused like any bad question, and the chat goes
    on."""
    reconfigure = getattr(sys.stdin, 'reconfigure', None)
    if reconfigure is not None:
        reconfigure(errors='surrogateescape')


def _check_counts(question: str, points, regions) -> None:
    for token, given, flags in ((MARK, len(points), '--point'),
                                (REGION, len(regions), '--box/--mask')):
        if question.count(token) != given:
            raise UsageError(f'the prompt holds {question.count(token)} {token} but {given} '
                             f'{flags} were given: put one {token} in the text for each {flags}, '
                             'in order')


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == '__main__':
    sys.exit(main())
