"""Does the trained tiny LLM use the image? Each check runs teacher-forced twice: with every
sample's own visual tokens, and with those of the sample four places further in the batch (same
text, same [SEG] decoding over the sample's own image). A caption sample is one image, a referring
sample one object, and an image has at most four objects, so that sample shows another image. A
model that reads the image is right far more often with its own tokens.

* captions (the synthetic LLaVA-Pretrain captions, training images): how often the LLM's most likely
  colour / kind word (among the 6 colours / 4 kinds) is the caption's;
* referring segmentation (held-out val): cIoU of the teacher-forced ``[SEG]`` masks; and, with the
  own tokens, whether the LLM's last layer looks from each ``[SEG]`` at the visual token of its
  object (the object query whose own mask overlaps the ground truth best, IoU >= 0.5): how often
  that token gets more attention (summed over heads) than the image's other object tokens.

    python projects/tiny_omg_llava/image_use.py --data-root data/synthetic_shapes [--pth PTH] \\
        [--batches 25]

Without ``--pth`` it checks the committed default (its config, checkpoint and encoder files).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from synthetic_shapes import COLOURS, KINDS  # noqa: E402

BATCH_SIZE = 8
OTHER_IMAGE_SHIFT = 4  # > the most objects (referring samples) of one image

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from omg_llava.inference import defaults
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-root', required=True, help='synthetic_shapes.py output folder')
    parser.add_argument('--config', default=defaults.DEFAULT_CONFIG)
    parser.add_argument('--pth', default=None,
                        help='released-format checkpoint (default: the committed one)')
    parser.add_argument('--omg-seg-pth', default=None)
    parser.add_argument('--clip-pth', default=None)
    parser.add_argument('--class-embed-pth', default=None)
    parser.add_argument('--batches', type=int, default=25, help='batches of 8 per check')
    return parser.parse_args(argv)


def word_pieces(tokenizer, words) -> list[list[int]]:
    """Token pieces of each word as it appears inside a sentence (after a space)."""
    return [tokenizer.encode(f'A {w}', add_special_tokens=False)[1:] for w in words]


def first_piece_positions(labels: torch.Tensor,
                          pieces: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions (N, 2) in ``labels`` where a whole word of ``pieces`` starts, its word index
    (N,))."""
    found, which = [], []
    rows = labels.tolist()
    for b, row in enumerate(rows):
        for t in range(len(row)):
            for w, p in enumerate(pieces):
                if row[t:t + len(p)] == p:
                    found.append((b, t)), which.append(w)
    return (torch.tensor(found, dtype=torch.long).reshape(-1, 2),
            torch.tensor(which, dtype=torch.long))


def loader(dataset_cfg: dict, batches: int):
    from torch.utils.data import DataLoader
    from xtuner.registry import BUILDER

    from omg_llava.datasets import omg_llava_collate_fn
    dataset = BUILDER.build(dataset_cfg)
    limit = min(len(dataset), BATCH_SIZE * batches)
    return DataLoader(torch.utils.data.Subset(dataset, range(limit)), batch_size=BATCH_SIZE,
                      shuffle=False, collate_fn=omg_llava_collate_fn)


def other_images(sequences: list) -> list | None:
    """Sample i gets sample (i + 4) mod 8's visual sequence; None for a short (last) batch, which
    both measurements leave out so that "own" and "other" cover the same samples."""
    if len(sequences) != BATCH_SIZE:
        return None
    return sequences[OTHER_IMAGE_SHIFT:] + sequences[:OTHER_IMAGE_SHIFT]


@torch.no_grad()
def spliced_llm_output(model, data: dict, sequences, output_attentions: bool = False):
    from omg_llava.models.multimodal_inputs import splice_multimodal_inputs
    spliced = splice_multimodal_inputs(data['input_ids'], model.llm.get_input_embeddings(),
                                       model.token_ids, attention_mask=data.get('attention_mask'),
                                       labels=data['labels'], visual_sequences=sequences)
    out = model.llm(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                    position_ids=spliced.position_ids, output_hidden_states=True, use_cache=False,
                    # attentions: the eager path
                    output_attentions=output_attentions, return_dict=True)
    return spliced, out


def points_at_object(data: dict, images, seg: torch.Tensor, gt: torch.Tensor,
                     attention: torch.Tensor
                     ) -> torch.Tensor:
    """(n,) bool per [SEG] that has an object token: is that token the image's most attended object
    token?

    Args:
        seg: (B, T) [SEG] input positions; gt: (N, H, W) their masks; attention: (B, nH, T, T) of
            one layer.
    """
    from omg_llava.models.multimodal_inputs import image_start_positions, object_token_positions
    from omg_llava.models.auxiliary_losses.object_token_hint import matching_object_tokens
    enc = images.encoder_output
    rows, cols = seg.nonzero().unbind(-1)
    image_valid = (~enc.query_blocked).any(-1)  # (B, Q)
    valid = image_valid[rows]  # (N, Q)
    target, found = matching_object_tokens(gt, enc.mask_logits, image_valid, rows)
    starts = image_start_positions(data['input_ids'], data.get('attention_mask'))[rows]
    n_pixels = enc.pixel_tokens.shape[1]
    # (N, Q) by rank among valid
    candidates = starts[:, None] + n_pixels + 1 + torch.arange(valid.shape[1])
    received = attention.sum(1)[rows[:, None], cols[:, None],
                                candidates.clamp(max=attention.shape[-1] - 1)]
    received = received.masked_fill(torch.arange(valid.shape[1]) >= valid.sum(-1, keepdim=True),
                                    -1.0)
    target_col = object_token_positions(starts, n_pixels, valid, target)
    return (candidates.gather(1, received.argmax(-1, keepdim=True))[:, 0] == target_col)[found]


def caption_word_accuracy(model, tokenizer, dataset_cfg: dict, batches: int) -> dict:
    """Right colour / kind words of the captions, with the own and with another image's visual
    tokens."""
    groups = {'colour': word_pieces(tokenizer, COLOURS), 'kind': word_pieces(tokenizer, KINDS)}
    first_pieces = {g: torch.tensor([p[0] for p in pieces]) for g, pieces in groups.items()}
    counts = {f'{g}_{m}': [0, 0] for g in groups for m in ('own', 'other')}
    for batch in loader(dataset_cfg, batches):
        data = model.data_preprocessor(batch, False)['data']
        with torch.no_grad():
            own = model.encode_images(data['pixel_values']).visual_sequences
        if other_images(own) is None:
            continue
        for mode, sequences in (('own', own), ('other', other_images(own))):
            spliced, out = spliced_llm_output(model, data, sequences)
            for group, pieces in groups.items():
                positions, words = first_piece_positions(spliced.labels, pieces)
                if not len(positions):
                    continue
                # the logits that predict the word
                logits = out.logits[positions[:, 0], positions[:, 1] - 1]
                right = logits[:, first_pieces[group]].argmax(-1) == words
                counts[f'{group}_{mode}'][0] += int(right.sum())
                counts[f'{group}_{mode}'][1] += len(right)
    return {k: round(r / n, 3) if n else None for k, (r, n) in counts.items()}


def seg_ciou(model, dataset_cfg: dict, batches: int) -> dict:
    """cIoU of the teacher-forced [SEG] masks with the own and with another image's visual tokens,
    and how often the last LLM layer looks at the asked-for object's token (own tokens)."""
    totals = {'own': [0, 0], 'other': [0, 0]}
    pointed = [0, 0]
    for batch in loader(dataset_cfg, batches):
        data = model.data_preprocessor(batch, False)['data']
        with torch.no_grad():
            images = model.encode_images(data['pixel_values'])
        own = images.visual_sequences
        gt = torch.cat([m for m in data['masks'] if m is not None]).bool()
        if (other_images(own) is None
                or int((data['labels'] == model.token_ids.seg).sum()) != len(gt)):
            continue  # a short batch, or a truncated answer that lost a [SEG]
        for mode, sequences in (('own', own), ('other', other_images(own))):
            spliced, out = spliced_llm_output(model, data, sequences,
                                              output_attentions=mode == 'own')
            seg = spliced.labels == model.token_ids.seg
            if mode == 'own':
                hits = points_at_object(data, images, seg, gt, out.attentions[-1])
                pointed[0] += int(hits.sum())
                pointed[1] += len(hits)
            with torch.no_grad():
                logits = model.decode_seg_masks(out.hidden_states[-1][seg], seg.nonzero()[:, 0],
                                                images)[-1]
            pred = F.interpolate(logits.float(), size=gt.shape[-2:], mode='bilinear')[:, 0] > 0
            totals[mode][0] += int((pred & gt).sum())
            totals[mode][1] += int((pred | gt).sum())
    figures = {f'seg_ciou_{m}': round(i / u, 3) if u else None for m, (i, u) in totals.items()}
    figures['seg_looks_at_object'] = round(pointed[0] / pointed[1], 3) if pointed[1] else None
    return figures


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from xtuner.registry import BUILDER

    from omg_llava.datasets.llava import LLaVADataset
    from omg_llava.datasets.refer_seg import ReferSegDataset
    from omg_llava.inference import defaults
    from omg_llava.inference.model_builder import build_model
    model, cfg, _ = build_model(args.config, pth=defaults.checkpoint_for(args.config, args.pth),
                                omg_seg=args.omg_seg_pth, clip=args.clip_pth,
                                class_embed=args.class_embed_pth)
    tokenizer = BUILDER.build(cfg.tokenizer)
    root = args.data_root.rstrip('/') + '/'
    common = dict(tokenizer=cfg.tokenizer, image_size=cfg.image_size, max_length=cfg.max_length)
    captions = dict(type=LLaVADataset,
                    data_path=root + 'llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json',
                    image_folder=root + 'llava_data/LLaVA-Pretrain/images', **common)
    refer = dict(type=ReferSegDataset, data_root=root + 'ref_seg/', dataset='refcoco',
                 split_by='unc', split='val',
                 image_folder=root + 'glamm_data/images/coco2014/train2014/', **common)
    figures = caption_word_accuracy(model, tokenizer, captions, args.batches)
    figures.update(seg_ciou(model, refer, args.batches))
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == '__main__':
    main()
