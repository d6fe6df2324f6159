"""Splice visual tokens and visual-prompt embeddings into token sequences (spec §5.4, §6.4).

Token ids carry three kinds of placeholders: the image sentinel ``-200`` (replaced by the image's
whole visual sequence), ``<region>`` and ``<mark>`` (each replaced by one prompt embedding, consumed
in batch-then-position order). Labels of inserted rows are ``-100``; sequences are right-padded with
zero embeddings; position ids restart at 0 for every sample (0 on padding).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from omg_llava.utils.constants import DEFAULT_PAD_TOKEN_ID, IGNORE_INDEX, IMAGE_TOKEN_INDEX

from .special_tokens import SpecialTokenIds


@dataclass
class SplicedInputs:
    """LLM inputs after splicing. Shapes: ``inputs_embeds`` (B, T, D), the rest (B, T)."""

    inputs_embeds: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    labels: Tensor | None


class PromptCountError(ValueError):
    """The number of ``<region>`` / ``<mark>`` / ``<image>`` placeholders does not match the inputs
    given."""


def count_placeholders(input_ids: Tensor, attention_mask: Tensor | None, token_id: int) -> Tensor:
    """(B,) number of ``token_id`` in the valid (unpadded) part of each sequence."""
    hits = input_ids == token_id
    if attention_mask is not None:
        hits = hits & attention_mask.bool()
    return hits.sum(dim=1)


def placeholder_batch_indices(input_ids: Tensor, attention_mask: Tensor | None,
                              token_id: int) -> Tensor:
    """(N,) sample index of every ``token_id`` placeholder in batch-then-position order."""
    counts = count_placeholders(input_ids, attention_mask, token_id)
    return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)


def image_start_positions(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """(B,) position of each sample's first visual row in its spliced sequence (−1 without
    ``<image>``).

    Every other placeholder becomes exactly one row, so the image starts where its placeholder sits
    among the valid (unpadded) tokens.
    """
    mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
            else attention_mask.bool())
    is_image = (input_ids == IMAGE_TOKEN_INDEX) & mask
    valid_before = mask.long().cumsum(dim=1) - 1  # (B, L) index among valid tokens
    starts = torch.where(is_image, valid_before, torch.full_like(valid_before, -1))
    return starts.max(dim=1).values


def object_token_positions(image_starts: Tensor, n_pixel_tokens: int, valid: Tensor,
                           query_idxs: Tensor) -> Tensor:
    """(N,) spliced-sequence position of object query ``query_idxs[n]`` of an image (a visual
    sequence is h·w pixel tokens, the separator, then the valid queries in ascending index).

    Args:
        image_starts: (N,) start of the image's visual rows (:func:`image_start_positions`).
        n_pixel_tokens: h·w.
        valid: (N, Q) bool, the image's queries that are visual tokens.
        query_idxs: (N,) long, a valid query of each image.
    """
    rank = valid.long().cumsum(dim=-1).gather(1, query_idxs[:, None])[:, 0] - 1
    return image_starts + n_pixel_tokens + 1 + rank


def splice_multimodal_inputs(input_ids: Tensor, embed_tokens: nn.Module, token_ids: SpecialTokenIds,
                             attention_mask: Tensor | None = None, labels: Tensor | None = None,
                             visual_sequences: Sequence[Tensor | None] | None = None,
                             region_embeds: Tensor | None = None,
                             mark_embeds: Tensor | None = None) -> SplicedInputs:
    """Build the LLM input embeddings of a batch.

    Args:
        input_ids: (B, L) ids with placeholders; right padding is removed through
            ``attention_mask``.
        embed_tokens: the LLM input embedding (``tok_embeddings``).
        token_ids: ids of ``<region>`` and ``<mark>``.
        attention_mask: (B, L), True/1 on real tokens (default: all real).
        labels: (B, L) or None.
        visual_sequences: per sample, its visual sequence (n_b, D) or None when the sample has no
            image. A sample holding ``<image>`` needs one; a sample without ``<image>`` ignores it.
        region_embeds: (R, D) one row per ``<region>`` in batch-then-position order.
        mark_embeds: (M, D) one row per ``<mark>`` in batch-then-position order.

    Raises:
        PromptCountError: a sample has more than one ``<image>``, an ``<image>`` without an image,
            or the number of ``<region>`` / ``<mark>`` differs from the rows given.
    """
    B, L = input_ids.shape
    mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
            else attention_mask.bool())
    placeholders = {IMAGE_TOKEN_INDEX: None, token_ids.region: region_embeds,
                    token_ids.mark: mark_embeds}
    _check_counts(input_ids, mask, token_ids, visual_sequences, region_embeds, mark_embeds)

    is_placeholder = torch.zeros_like(mask)
    for token_id in placeholders:
        is_placeholder |= input_ids == token_id
    # (B, L, D); placeholder rows dropped
    text_embeds = embed_tokens(input_ids.masked_fill(is_placeholder, 0))
    cursor = {token_ids.region: 0, token_ids.mark: 0}
    rows, row_labels = [], []
    for b in range(B):
        valid = mask[b].nonzero().flatten()
        ids_b = input_ids[b, valid]
        emb_b = text_embeds[b, valid]
        lab_b = labels[b, valid] if labels is not None else None
        pieces, piece_labels = [], []
        start = 0
        for pos in (is_placeholder[b, valid]).nonzero().flatten().tolist():
            pieces.append(emb_b[start:pos])
            piece_labels.append(lab_b[start:pos] if lab_b is not None else None)
            token_id = int(ids_b[pos])
            if token_id == IMAGE_TOKEN_INDEX:
                inserted = visual_sequences[b]
            else:
                inserted = placeholders[token_id][cursor[token_id]:cursor[token_id] + 1]
                cursor[token_id] += 1
            pieces.append(inserted.to(emb_b.dtype))
            piece_labels.append(input_ids.new_full((len(inserted), ), IGNORE_INDEX))
            start = pos + 1
        pieces.append(emb_b[start:])
        piece_labels.append(lab_b[start:] if lab_b is not None else None)
        rows.append(torch.cat(pieces))
        row_labels.append(torch.cat(piece_labels) if lab_b is not None else None)
    return _pad_right(rows, row_labels if labels is not None else None)


def _pad_right(rows: list[Tensor], row_labels: list[Tensor] | None) -> SplicedInputs:
    B, T, D = len(rows), max(len(r) for r in rows), rows[0].shape[-1]
    embeds = rows[0].new_zeros((B, T, D))
    attention_mask = torch.zeros((B, T), dtype=torch.bool, device=embeds.device)
    position_ids = torch.zeros((B, T), dtype=torch.long, device=embeds.device)
    labels = None if row_labels is None else torch.full((B, T), IGNORE_INDEX, dtype=torch.long,
                                                         device=embeds.device)
    for b, row in enumerate(rows):
        n = len(row)
        embeds[b, :n] = row
        attention_mask[b, :n] = True
        position_ids[b, :n] = torch.arange(n, device=embeds.device)
        if labels is not None:
            labels[b, :n] = row_labels[b]
    return SplicedInputs(embeds, attention_mask, position_ids, labels)


def _check_counts(input_ids: Tensor, mask: Tensor, token_ids: SpecialTokenIds,
                  visual_sequences: Sequence[Tensor | None] | None, region_embeds: Tensor | None,
                  mark_embeds: Tensor | None) -> None:
    images = count_placeholders(input_ids, mask, IMAGE_TOKEN_INDEX)
    for b, n in enumerate(images.tolist()):
        if n > 1:
            raise PromptCountError(f'sample {b} holds {n} <image> placeholders; OMG-LLaVA takes '
                                   'one image per conversation, placed once in the first question')
        if n == 1 and (visual_sequences is None or visual_sequences[b] is None):
            raise PromptCountError(f'sample {b} asks about an <image> but no image was given; pass '
                                   'the image or remove <image> from the prompt')
    for name, token_id, embeds in (('<region>', token_ids.region, region_embeds),
                                   ('<mark>', token_ids.mark, mark_embeds)):
        needed = int(count_placeholders(input_ids, mask, token_id).sum())
        given = 0 if embeds is None else len(embeds)
        if needed != given:
            raise PromptCountError(f'the text holds {needed} {name} placeholder(s) but {given} '
                                   'visual prompt(s) were given for them; give one prompt per '
                                   f'{name}, in the order they appear')


def drop_tokens(input_ids: Tensor, labels: Tensor, attention_mask: Tensor, token_ids: Sequence[int],
                pad_index: int = DEFAULT_PAD_TOKEN_ID) -> tuple[Tensor, Tensor, Tensor]:
    """Remove every position holding one of ``token_ids`` and right-pad again.

    Args:
        input_ids / labels / attention_mask: (B, L) right-padded batch (mask True on real tokens).
        token_ids: ids to remove (e.g. the ``<image>`` sentinel and the visual-prompt placeholders).

    Returns:
        (B, L') ids, labels (−100 on padding) and bool mask, L' the longest remaining row.
    """
    keep = attention_mask.bool() & ~torch.isin(input_ids,
                                               torch.tensor(list(token_ids),
                                                            device=input_ids.device))
    lengths = keep.sum(1)
    width = max(int(lengths.max()), 1)
    ids = input_ids.new_full((len(input_ids), width), pad_index)
    out_labels = labels.new_full((len(labels), width), IGNORE_INDEX)
    mask = torch.zeros((len(input_ids), width), dtype=torch.bool, device=input_ids.device)
    for b in range(len(input_ids)):
        n = int(lengths[b])
        ids[b, :n] = input_ids[b, keep[b]]
        out_labels[b, :n] = labels[b, keep[b]]
        mask[b, :n] = True
    return ids, out_labels, mask
