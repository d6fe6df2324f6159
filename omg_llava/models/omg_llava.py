"""The OMG-LLaVA model: OMG-Seg visual encoder + projectors + InternLM2, with [SEG] masks (spec §1, §4–6).

Data flow of one batch (:meth:`OMGLLaVA.forward`):

1. :meth:`encode_images`: pixels (B, 3, H, W) → frozen OMG-Seg → visual tokens → projector → one visual
   sequence (h·w + 1 + n_valid, D) per image, plus the image features that prompts and [SEG] decode over.
2. ``<region>`` / ``<mark>`` placeholders get one embedding each from their visual prompt
   (:mod:`~omg_llava.models.visual_prompts`), ``<image>`` (−200) gets the visual sequence
   (:func:`~omg_llava.models.multimodal_inputs.splice_multimodal_inputs`).
3. The LLM runs on the spliced embeddings; the final post-norm hidden state at every ``[SEG]`` input position
   goes through ``projector_text2vision`` and the OMG decoder into a mask.

Checkpoints hold only what the reference saves (:mod:`~omg_llava.models.save_filter`), under the reference
module paths (``llm.base_model.model.…``, ``projector.model.…``, ``projector_text2vision.model.…``).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import Tensor, nn

from omg_llava.registry import MODELS, build_component
from omg_llava.utils.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

from .lora import wrap_llm_with_lora
from .multimodal_inputs import (PromptCountError, SplicedInputs, count_placeholders, drop_tokens,
                                image_start_positions, object_token_positions, placeholder_batch_indices,
                                splice_multimodal_inputs)
from .omg_seg_encoder import VisualEncoderOutput
from .projectors import OMGVisualProjector, Text2VisionProjector
from .save_filter import filter_saved_keys
from .seg_heads.omg_seg_head import DecodeOutput, ImageFeatures
from .seg_losses import (MaskLossConfig, matching_object_tokens, non_negative_weight, object_token_hint_loss,
                         pretrain_alignment_loss, seg_attention_hint_loss, seg_class_loss, seg_mask_losses)
from .special_tokens import SpecialTokenIds, add_special_tokens, fit_embeddings
from .visual_prompts import VisualPrompt, encode_visual_prompts, prompts_from_tensors

STAGES = ('pretrain', 'finetune')
IM_END_TOKEN = '<|im_end|>'


class PromptTooLongError(ValueError):
    """The spliced prompt (text + visual tokens) exceeds the model's ``max_length``."""


@dataclass
class EncodedImages:
    """A batch of images encoded once (a chat reuses it for every turn).

    Attributes:
        encoder_output: the visual encoder's output (features for prompts and [SEG] decoding).
        visual_sequences: per image, its LLM-space visual sequence (h·w + 1 + n_valid, D).
    """

    encoder_output: VisualEncoderOutput
    visual_sequences: list[Tensor]

    @property
    def features(self) -> ImageFeatures:
        return self.encoder_output.image_features


@dataclass
class GenerationOutput:
    """One generated answer.

    Attributes:
        token_ids: (T,) generated ids, up to and including the first stop token.
        seg_positions: (n,) indices into ``token_ids`` of the generated ``[SEG]`` tokens.
        mask_logits: (n, H/4, W/4) mask logits on the network input square, one per ``[SEG]`` (last decoder
            step, before any upsampling; map them to the image with ``SquareGeometry.logits_to_original``).
            Empty when no image was given.
    """

    token_ids: Tensor
    seg_positions: Tensor
    mask_logits: Tensor


@dataclass
class LossInfo:
    """Per-batch bookkeeping of the count-mismatch rules of spec §6 (logged, never silent)."""

    prompt_mismatch_batches: int = 0
    seg_mismatch_samples: int = 0
    notes: list[str] = field(default_factory=list)


@MODELS.register_module()
class OMGLLaVA(BaseModel):
    """OMG-LLaVA (mmengine ``BaseModel``; modes ``loss`` / ``predict`` / ``tensor``).

    Args:
        llm: the causal LM (module or xtuner-style config dict, e.g. ``dict(type=AutoModelForCausalLM
            .from_pretrained, pretrained_model_name_or_path=...)``).
        visual_encoder: :class:`~omg_llava.models.OMGSegVisualEncoder` (module or config).
        tokenizer: the LLM tokenizer (module or config). The special tokens are added to it. Without one,
            the ids follow the base vocabulary (``special_token_ids`` overrides).
        stage: ``'pretrain'`` (LM loss + 10·MSE alignment of ``projector_text2vision``) or ``'finetune'``
            (LM loss + [SEG] mask losses).
        llm_lora: a ``peft.LoraConfig`` or its arguments; ``None`` keeps the LLM unwrapped.
        freeze_llm: freeze the LLM base weights (LoRA and the vocabulary tensors still train in finetune).
            ``False`` trains the whole LLM and saves it in the checkpoint (tiny models trained from scratch).
        projector_depth: depth of both projector MLPs.
        mask_loss: :class:`~omg_llava.models.seg_losses.MaskLossConfig` or its fields.
        pretrain_loss_weight: weight of the pretrain alignment MSE.
        object_token_hint_weight: weight of :func:`~omg_llava.models.seg_losses.object_token_hint_loss` in the
            finetune (``loss_hint``); 0, the reference recipe, leaves it out. The tiny synthetic model uses it.
        seg_attention_hint_weight: weight of :func:`~omg_llava.models.seg_losses.seg_attention_hint_loss` in the
            finetune (``loss_attn``): in each layer of ``seg_attention_hint_layers``, head
            ``seg_attention_hint_head`` (``None``: the heads' mean) learns to attend from every [SEG] to the visual
            token of its ground-truth object. 0 (the reference recipe) leaves it out and runs the LLM without
            attention outputs.
        seg_attention_hint_layers: LLM layer indices (negative from the last) supervised by ``loss_attn``.
        seg_attention_hint_head: the supervised head of those layers, or ``None`` for their mean.
        text_only_lm_weight: weight of ``loss_lm_text``, the LM loss of the same conversations with the image and the
            visual prompts left out (an extra LLM pass on the text alone). 0 (the reference recipe) leaves it out.
            The tiny synthetic model uses it: without it, the image offers its from-scratch LLM a shortcut (name a
            visible object) that wins over repeating the asked-for expression.
        text_only_rows: how many rows of each batch get that text-only pass (the first ones; the training batches
            are shuffled), ``None`` for all. The pass costs about as much LLM arithmetic as the main one; fewer
            rows buy back time. Only rows the batch's ``text_only_lm`` flags allow count
            (``CombinedDataset(text_only_lm=...)``: the conversations whose answers the text alone can give).
        seg_class_weight: weight of :func:`~omg_llava.models.seg_losses.seg_class_loss` in the finetune
            (``loss_seg_cls``): the decoder's class head read on each decoded [SEG] query must give the class of the
            visual-token query that segments its ground truth. 0 (the reference recipe) leaves it out.
        seg_class_count: the classes that term compares, the first ones of the class embeddings (the data's
            classes; a tiny encoder keeps untrained random ones after them, whose logits can be the largest);
            ``None``: all of them.
        use_activation_checkpointing: gradient checkpointing in the LLM.
        max_length: longest spliced sequence (text + visual tokens) accepted by :meth:`generate`; default
            the LLM's ``max_position_embeddings``.
        pretrained_pth: a released-format checkpoint loaded by :meth:`init_weights`.
        special_token_ids: explicit ``SpecialTokenIds`` fields (for exports whose vocabulary is resized).
        data_preprocessor: mmengine data preprocessor config.
    """

    def __init__(self, llm: nn.Module | dict, visual_encoder: nn.Module | dict, tokenizer: Any = None,
                 stage: str = 'finetune', llm_lora: Any = None, freeze_llm: bool = True, projector_depth: int = 2,
                 mask_loss: MaskLossConfig | dict | None = None, pretrain_loss_weight: float = 10.0,
                 object_token_hint_weight: float = 0.0, seg_attention_hint_weight: float = 0.0,
                 seg_attention_hint_layers: Sequence[int] = (-1, ), seg_attention_hint_head: int | None = 0,
                 text_only_lm_weight: float = 0.0, text_only_rows: int | None = None, seg_class_weight: float = 0.0,
                 seg_class_count: int | None = None, use_activation_checkpointing: bool = True,
                 max_length: int | None = None,
                 pretrained_pth: str | None = None, special_token_ids: dict | None = None,
                 data_preprocessor: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        if stage not in STAGES:
            raise ValueError(f'stage must be one of {STAGES}, got {stage!r}')
        self.stage = stage
        self.tokenizer = build_component(tokenizer)
        llm = build_component(llm)
        self.token_ids = self._special_token_ids(llm, special_token_ids)
        fit_embeddings(llm, self.token_ids)
        self.freeze_llm = freeze_llm  # False: the whole LLM trains and is saved
        if freeze_llm:
            llm.requires_grad_(False)
        if llm_lora is not None:
            llm = wrap_llm_with_lora(llm, llm_lora, use_activation_checkpointing)
            # The reference also trains the vocabulary tensors next to the adapters (spec §5.3).
            llm.get_input_embeddings().requires_grad_(True)
            head = llm.get_output_embeddings()
            getattr(head, 'base_layer', head).requires_grad_(True)
        if use_activation_checkpointing:
            llm.enable_input_require_grads()
            llm.gradient_checkpointing_enable()
        self.llm = llm
        self.visual_encoder = build_component(visual_encoder)
        head = self.visual_encoder.panoptic_head
        if head.with_llm_decoder_copy:  # task finetunes train the decoder copies (spec §3.7)
            head.transformer_decoder_llm.requires_grad_(True)
            head.mask_embed_llm.requires_grad_(True)
        hidden = llm.config.hidden_size
        self.projector = OMGVisualProjector(query_channels=self.visual_encoder.query_channels,
                                            clip_channels=self.visual_encoder.pixel_shuffled_channels,
                                            llm_hidden_size=hidden, depth=projector_depth)
        self.projector_text2vision = Text2VisionProjector(llm_hidden_size=hidden,
                                                          query_channels=self.visual_encoder.query_channels,
                                                          depth=projector_depth)
        self.mask_loss = mask_loss if isinstance(mask_loss, MaskLossConfig) else MaskLossConfig(**(mask_loss or {}))
        self.pretrain_loss_weight = pretrain_loss_weight
        self.object_token_hint_weight = non_negative_weight('object_token_hint_weight', object_token_hint_weight)
        self.seg_attention_hint_weight = non_negative_weight('seg_attention_hint_weight', seg_attention_hint_weight)
        self.seg_attention_hint_layers = tuple(seg_attention_hint_layers)
        self.seg_attention_hint_head = seg_attention_hint_head
        self.text_only_lm_weight = non_negative_weight('text_only_lm_weight', text_only_lm_weight)
        if text_only_rows is not None and text_only_rows < 1:
            raise ValueError(f'text_only_rows must be >= 1 or None (every row), got {text_only_rows}')
        self.text_only_rows = text_only_rows
        self.seg_class_weight = non_negative_weight('seg_class_weight', seg_class_weight)
        if seg_class_count is not None and seg_class_count < 2:
            raise ValueError(f'seg_class_count must be >= 2 or None (all classes), got {seg_class_count}')
        self.seg_class_count = seg_class_count
        self.max_length = max_length or llm.config.max_position_embeddings
        self.pretrained_pth = pretrained_pth
        self.stop_token_ids = self._stop_token_ids()
        self.loss_info = LossInfo()

    # ------------------------------------------------------------------ construction helpers
    def _special_token_ids(self, llm: nn.Module, explicit: dict | None) -> SpecialTokenIds:
        if explicit is not None:
            return SpecialTokenIds(**explicit)
        if self.tokenizer is not None:
            return add_special_tokens(self.tokenizer)
        return SpecialTokenIds.after_vocabulary(llm.config.vocab_size)

    def _stop_token_ids(self) -> list[int]:
        ids = []
        if self.tokenizer is not None:
            ids.append(self.tokenizer.eos_token_id)
            im_end = self.tokenizer.convert_tokens_to_ids(IM_END_TOKEN)
            if im_end is not None and im_end != self.tokenizer.unk_token_id:
                ids.append(im_end)
        else:
            eos = self.llm.config.eos_token_id
            ids.extend(eos if isinstance(eos, (list, tuple)) else [eos])
        return [i for i in dict.fromkeys(ids) if i is not None]

    @property
    def has_lora(self) -> bool:
        return hasattr(self.llm, 'peft_config')

    def init_weights(self) -> None:
        """Load the visual-encoder files named in its config, then ``pretrained_pth`` (never at construction)."""
        self.visual_encoder.init_weights()
        if self.pretrained_pth:
            from .released_weights import load_released_checkpoint
            load_released_checkpoint(self, self.pretrained_pth)

    def state_dict(self, *args, **kwargs) -> 'OrderedDict[str, Tensor]':
        """Only what the released checkpoints hold (spec §5.3); see :mod:`~omg_llava.models.save_filter`."""
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get('prefix', args[1] if len(args) > 1 else '')
        return filter_saved_keys(full, prefix, self.visual_encoder.panoptic_head.with_llm_decoder_copy,
                                 with_full_llm=not self.freeze_llm)

    # ------------------------------------------------------------------ encoding
    def encode_images(self, pixel_values: Tensor) -> EncodedImages:
        """(B, 3, H, W) normalised square images → :class:`EncodedImages` (encoder in its own dtype). A frozen
        encoder runs without gradients; an unfrozen one (e.g. a tiny model's segmentation pre-stage) trains."""
        encoder_output = self.visual_encoder(pixel_values)
        dtype = self.projector.model.seperate_embed.weight.dtype
        pixel_tokens, query_tokens, blocked = encoder_output.visual_tokens()
        sequences = self.projector(pixel_tokens.to(dtype), query_tokens.to(dtype), blocked)
        return EncodedImages(encoder_output, sequences)

    def prompt_embeddings(self, prompts: Sequence[VisualPrompt], images: EncodedImages | None) -> Tensor | None:
        """(N, D) LLM embeddings of visual prompts (``None`` when there are none)."""
        if not prompts:
            return None
        if images is None:
            raise PromptCountError(f'{len(prompts)} visual prompt(s) given without an image: prompts point into an '
                                   'image, so pass the image too')
        features = encode_visual_prompts(self.visual_encoder, prompts, images.features)
        return self.projector.project_queries(features.to(self.projector.model.query_proj.weight.dtype))

    def splice(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
               images: EncodedImages | None = None, region_prompts: Sequence[VisualPrompt] = (),
               mark_prompts: Sequence[VisualPrompt] = ()) -> SplicedInputs:
        """Token ids with placeholders → LLM input embeddings (strict: counts must match)."""
        sequences = None if images is None else images.visual_sequences
        if sequences is not None and len(sequences) != len(input_ids):
            raise PromptCountError(f'{len(sequences)} images for {len(input_ids)} sequences; give one image per '
                                   'sequence (a zero image for text-only samples)')
        return splice_multimodal_inputs(input_ids, self.llm.get_input_embeddings(), self.token_ids,
                                        attention_mask=attention_mask, labels=labels, visual_sequences=sequences,
                                        region_embeds=self.prompt_embeddings(region_prompts, images),
                                        mark_embeds=self.prompt_embeddings(mark_prompts, images))

    def run_llm(self, spliced: SplicedInputs, output_attentions: bool = False):
        """LLM forward with every hidden state; the last one is post-norm (the [SEG] source)."""
        return self.llm(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                        position_ids=spliced.position_ids, output_hidden_states=True, use_cache=False,
                        output_attentions=output_attentions, return_dict=True)

    def decode_seg_masks(self, seg_hidden_states: Tensor, batch_idxs: Tensor, images: EncodedImages) -> list[Tensor]:
        """[SEG] hidden states (N, D) → per decoder step (N, 1, H/4, W/4) mask logits (spec §6.1)."""
        return self.decode_seg_queries(self.projector_text2vision(seg_hidden_states), batch_idxs, images).mask_logits

    def decode_seg_queries(self, queries: Tensor, batch_idxs: Tensor, images: EncodedImages,
                           with_classes: bool = False) -> DecodeOutput:
        """[SEG] queries (N, 2C) (``projector_text2vision`` outputs) → every decoder step: ``.mask_logits[j]``
        (N, 1, H/4, W/4), and with ``with_classes`` ``.class_logits[j]`` (N, 1, K+2) (a training term only)."""
        return self.visual_encoder.decode_seg_queries(queries, batch_idxs, images.features, with_classes=with_classes)

    # ------------------------------------------------------------------ mmengine entry point
    def forward(self, data: dict, data_samples: Any = None, mode: str = 'loss', **generation_kwargs):
        """``loss`` → dict of losses; ``predict`` → list of :class:`GenerationOutput`; ``tensor`` → LLM output.

        ``data`` keys: ``input_ids`` (B, L), ``attention_mask`` (B, L), ``labels`` (B, L) for ``loss``,
        ``pixel_values`` (B, 3, H, W) (one image per sample; text-only samples carry any image), ``masks``
        (list of B tensors (n_b, H, W), one per ``[SEG]`` of the answer, for ``loss``), ``regions``
        (N, H, W) masks for the ``<region>`` tokens and ``points`` (N, 2) (x, y) for the ``<mark>`` tokens, both
        in batch-then-position order and network-input pixels. ``generation_kwargs`` go to :meth:`generate`.
        """
        if mode == 'loss':
            return self.compute_loss(data)
        if mode == 'predict':
            return self.predict(data, **generation_kwargs)
        if mode == 'tensor':
            images = self._encode_batch_images(data)
            return self.run_llm(self.splice(data['input_ids'], data.get('attention_mask'), data.get('labels'),
                                            images, *self._batch_prompts(data, strict=True)[:2]))
        raise ValueError(f'mode must be loss, predict or tensor, got {mode!r}')

    def _encode_batch_images(self, data: dict) -> EncodedImages | None:
        pixel_values = data.get('pixel_values')
        if pixel_values is None:
            return None
        needs_images = self.stage == 'pretrain' or bool((data['input_ids'] == IMAGE_TOKEN_INDEX).any())
        return self.encode_images(pixel_values) if needs_images else None

    def _batch_prompts(self, data: dict, strict: bool) -> tuple[list[VisualPrompt], list[VisualPrompt], bool]:
        """``regions`` → ``<region>`` mask prompts and ``points`` → ``<mark>`` point prompts, assigned to samples in
        placeholder order. Non-strict (training): extra prompts are dropped, missing ones later become zero rows,
        and the flag is False (spec §6.4: the batch's LM loss is then zeroed)."""
        ids, mask = data['input_ids'], data.get('attention_mask')
        out, matched = [], True
        for kind, key, token_id in (('mask', 'regions', self.token_ids.region), ('point', 'points',
                                                                                  self.token_ids.mark)):
            values = data.get(key)
            idx = placeholder_batch_indices(ids, mask, token_id)
            given = 0 if values is None else len(values)
            if given != len(idx):
                if strict:
                    raise PromptCountError(f'the text holds {len(idx)} {"<region>" if key == "regions" else "<mark>"} '
                                           f'placeholder(s) but {given} {key} were given')
                matched = False
            n = min(given, len(idx))
            out.append(prompts_from_tensors(kind, values[:n] if n else None, idx[:n]))
        return out[0], out[1], matched

    # ------------------------------------------------------------------ loss
    def compute_loss(self, data: dict) -> dict[str, Tensor]:
        """``loss_lm`` (LM cross-entropy) + (finetune) ``loss_dice`` / ``loss_mask`` of the [SEG] masks or (pretrain)
        ``loss_proj``; mmengine sums every ``loss*`` entry and logs the sum as ``loss``."""
        images = self._encode_batch_images(data)
        region_prompts, mark_prompts, prompts_matched = self._batch_prompts(data, strict=False)
        ids, mask = data['input_ids'], data.get('attention_mask')
        region_embeds = self._fitted_prompt_rows(region_prompts, images, ids, mask, self.token_ids.region)
        mark_embeds = self._fitted_prompt_rows(mark_prompts, images, ids, mask, self.token_ids.mark)
        spliced = splice_multimodal_inputs(ids, self.llm.get_input_embeddings(), self.token_ids, attention_mask=mask,
                                           labels=data['labels'],
                                           visual_sequences=None if images is None else images.visual_sequences,
                                           region_embeds=region_embeds, mark_embeds=mark_embeds)
        wants_attention = self.stage == 'finetune' and self.seg_attention_hint_weight > 0
        out = self.run_llm(spliced, output_attentions=wants_attention)
        losses = {'loss_lm': shifted_cross_entropy(out.logits, spliced.labels)}
        if not prompts_matched:
            self.loss_info.prompt_mismatch_batches += 1
            print_log('visual-prompt count differs from the <region>/<mark> placeholders (truncation?): the LM loss '
                      f'of this batch is zeroed ({self.loss_info.prompt_mismatch_batches} batches so far)',
                      logger='current', level=30)
            losses['loss_lm'] = losses['loss_lm'] * 0.0
        if self.text_only_lm_weight:
            losses['loss_lm_text'] = self.text_only_lm_weight * self._text_only_lm_loss(
                ids, data['labels'], mask, data.get('text_only_lm'))
        if self.stage == 'pretrain':
            if images is not None:
                enc = images.encoder_output
                losses['loss_proj'] = pretrain_alignment_loss(
                    enc.query_tokens.to(self.projector.model.query_proj.weight.dtype), enc.query_blocked,
                    self.projector.project_queries, self.projector_text2vision, self.pretrain_loss_weight)
        else:
            supervised, image_starts = None, None
            if wants_attention:  # the image positions only matter to the attention hint
                supervised = [out.attentions[i] for i in self.seg_attention_hint_layers]
                image_starts = image_start_positions(ids, mask)
            losses.update(self._seg_losses(out.hidden_states[-1], spliced.labels, data.get('masks'), images,
                                           supervised, image_starts))
        return losses

    def _text_only_lm_loss(self, ids: Tensor, labels: Tensor, mask: Tensor | None,
                           allowed: Tensor | None = None) -> Tensor:
        """LM loss of the same conversations (the first ``text_only_rows`` of those ``allowed``) with the image and
        visual prompts left out; 0 (in the graph) when no row is allowed. Shapes: (B, L) ids / labels / mask,
        (B,) bool ``allowed`` (``None``: every row)."""
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
        rows = torch.arange(len(ids), device=ids.device)
        if allowed is not None:
            rows = rows[allowed.to(ids.device)]
        rows = rows[:self.text_only_rows]  # [:None]: every allowed row
        if len(rows) == 0:
            return self.llm.get_input_embeddings().weight.sum() * 0.0
        ids, labels, mask = drop_tokens(ids[rows], labels[rows], mask[rows], self.token_ids.placeholder_ids)
        out = self.llm(input_ids=ids, attention_mask=mask, use_cache=False, return_dict=True)
        return shifted_cross_entropy(out.logits, labels)

    def _fitted_prompt_rows(self, prompts: list[VisualPrompt], images: EncodedImages | None, ids: Tensor,
                            mask: Tensor | None, token_id: int) -> Tensor | None:
        """Prompt embeddings padded with zero rows up to the placeholder count."""
        needed = int(count_placeholders(ids, mask, token_id).sum())
        if needed == 0:
            return None
        rows = self.llm.get_input_embeddings().weight.new_zeros((needed, self.llm.config.hidden_size))
        embeds = self.prompt_embeddings(prompts, images)
        if embeds is not None:
            rows = torch.cat([embeds.to(rows.dtype), rows[len(embeds):]])
        return rows

    def _seg_losses(self, hidden: Tensor, labels: Tensor, masks: Sequence[Tensor] | None,
                    images: EncodedImages | None, layer_attentions: list[Tensor] | None = None,
                    image_starts: Tensor | None = None) -> dict[str, Tensor]:
        """Mask losses over samples whose [SEG] count equals their mask count; a zero-weighted pass otherwise.

        ``layer_attentions``: the (B, nH, T, T) probabilities of the layers supervised by ``loss_attn``
        (:func:`~omg_llava.models.seg_losses.seg_attention_hint_loss`); ``image_starts``: (B,) from
        :func:`~omg_llava.models.multimodal_inputs.image_start_positions`."""
        seg_positions = labels == self.token_ids.seg  # (B, T) — [SEG] as input token, no shift
        seg_counts = seg_positions.sum(dim=1).tolist()
        mask_counts = [0 if m is None else len(m) for m in (masks or [None] * len(labels))]
        matched = [b for b, (s, m) in enumerate(zip(seg_counts, mask_counts)) if s == m and s > 0]
        mismatched = sum(1 for s, m in zip(seg_counts, mask_counts) if s != m)
        if mismatched:
            self.loss_info.seg_mismatch_samples += mismatched
            print_log(f'{mismatched} sample(s) have a [SEG] count different from their mask count (truncation?); '
                      f'their mask losses are skipped ({self.loss_info.seg_mismatch_samples} so far)',
                      logger='current', level=30)
        if not matched or images is None:
            dummy = self.projector_text2vision(hidden[:, 0]).sum() * 0.0  # keeps every trainable in the graph
            losses = {'loss_dice': dummy, 'loss_mask': dummy}
            if self.object_token_hint_weight:
                losses['loss_hint'] = dummy
            if self.seg_class_weight:
                losses['loss_seg_cls'] = dummy
            if layer_attentions is not None:
                losses['loss_attn'] = dummy + sum(a.sum() for a in layer_attentions) * 0.0
            return losses
        keep = torch.zeros_like(seg_positions)
        keep[matched] = seg_positions[matched]
        batch_idxs = keep.nonzero()[:, 0]
        queries = self.projector_text2vision(hidden[keep])  # (N, 2C)
        decoded = self.decode_seg_queries(queries, batch_idxs, images, with_classes=bool(self.seg_class_weight))
        gt = torch.cat([masks[b] for b in matched]).to(decoded.mask_logits[0].device)
        losses = seg_mask_losses(decoded.mask_logits, gt, self.mask_loss)
        if self.object_token_hint_weight or self.seg_class_weight or layer_attentions is not None:
            enc = images.encoder_output
            image_valid = (~enc.query_blocked).any(-1)  # (B, Q)
            valid = image_valid[batch_idxs]  # (N, Q)
            query_idxs, found = matching_object_tokens(gt, enc.mask_logits, image_valid, batch_idxs)
        if self.object_token_hint_weight:
            losses['loss_hint'] = self.object_token_hint_weight * object_token_hint_loss(
                queries, enc.query_tokens[batch_idxs].to(queries.dtype), valid, query_idxs, found)
        if self.seg_class_weight:
            num_classes = self.seg_class_count or enc.class_logits.shape[-1] - 1  # the no-object column is last
            token_logits = enc.class_logits[batch_idxs, query_idxs, :num_classes]  # (N, K)
            seg_logits = decoded.class_logits[-1][:, 0, :num_classes]  # (N, K), no-object and IoU dropped
            losses['loss_seg_cls'] = self.seg_class_weight * seg_class_loss(seg_logits, token_logits, found)
        if layer_attentions is not None:
            target_cols = object_token_positions(image_starts[batch_idxs], enc.pixel_tokens.shape[1], valid,
                                                 query_idxs)
            seg_cols = keep.nonzero()[:, 1]
            found = found & (image_starts[batch_idxs] >= 0)
            losses['loss_attn'] = self.seg_attention_hint_weight * sum(
                seg_attention_hint_loss(p, batch_idxs, seg_cols, target_cols, found, self.seg_attention_hint_head)
                for p in layer_attentions
            ) / len(layer_attentions)
        return losses

    # ------------------------------------------------------------------ generation
    def predict(self, data: dict, **generation_kwargs) -> list[GenerationOutput]:
        """Generate answers for a collated batch (``regions`` / ``points`` as in ``loss`` mode)."""
        images = self._encode_batch_images(data)
        region_prompts, mark_prompts, _ = self._batch_prompts(data, strict=True)
        return self.generate(data['input_ids'], data.get('attention_mask'), images, region_prompts, mark_prompts,
                             **generation_kwargs)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, images: EncodedImages | None = None,
                 region_prompts: Sequence[VisualPrompt] = (), mark_prompts: Sequence[VisualPrompt] = (),
                 max_new_tokens: int = 100, **generation_kwargs) -> list[GenerationOutput]:
        """Answer prompts and decode one mask per generated ``[SEG]``.

        Args:
            input_ids: (B, L) right-padded prompt ids with placeholders (see :meth:`forward`).
            attention_mask: (B, L).
            images: from :meth:`encode_images` (required when a prompt holds ``<image>``).
            region_prompts / mark_prompts: one prompt per ``<region>`` / ``<mark>``, in order.
            max_new_tokens: generation budget.
            generation_kwargs: passed to ``generate`` (``do_sample``, ``temperature``, ``top_p``, ...).

        Raises:
            PromptCountError: placeholders and prompts/images disagree.
            PromptTooLongError: the spliced prompt exceeds ``max_length``.
        """
        spliced = self.splice(input_ids, attention_mask, None, images, region_prompts, mark_prompts)
        lengths = spliced.attention_mask.sum(dim=1)
        if int(lengths.max()) >= self.max_length:
            raise PromptTooLongError(f'the prompt is {int(lengths.max())} tokens long with its visual tokens, over the '
                                     f'model limit of {self.max_length}; shorten the question or reset the '
                                     'conversation history')
        embeds, mask = left_pad(spliced.inputs_embeds, spliced.attention_mask)
        kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=self.stop_token_ids,
                      pad_token_id=self.stop_token_ids[0] if self.stop_token_ids else 0, do_sample=False)
        kwargs.update(generation_kwargs)
        generated = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)  # (B, N) new ids only
        keep = valid_generated_mask(generated, self.stop_token_ids)  # (B, N)
        return self._outputs_with_masks(embeds, mask, generated, keep, images)

    def _outputs_with_masks(self, embeds: Tensor, mask: Tensor, generated: Tensor, keep: Tensor,
                            images: EncodedImages | None) -> list[GenerationOutput]:
        """Re-run the prompt + answer once to read the post-norm state at every generated [SEG] input position."""
        seg = (generated == self.token_ids.seg) & keep
        B = len(generated)
        mask_logits: list[Tensor] = [embeds.new_zeros((0, 0, 0)) for _ in range(B)]
        if seg.any() and images is not None:
            full_embeds = torch.cat([embeds, self.llm.get_input_embeddings()(generated.masked_fill(~keep, 0))], dim=1)
            full_mask = torch.cat([mask, keep], dim=1)
            position_ids = (full_mask.long().cumsum(-1) - 1).clamp(min=0)
            out = self.llm(inputs_embeds=full_embeds, attention_mask=full_mask, position_ids=position_ids,
                           output_hidden_states=True, use_cache=False, return_dict=True)
            hidden = out.hidden_states[-1][:, embeds.shape[1]:]  # (B, N, D)
            steps = self.decode_seg_masks(hidden[seg], seg.nonzero()[:, 0], images)
            mask_logits = list(steps[-1][:, 0].float().split(seg.sum(dim=1).tolist()))  # (n_b, H/4, W/4) each
        return [GenerationOutput(generated[b][keep[b]], seg[b][keep[b]].nonzero().flatten(), mask_logits[b])
                for b in range(B)]


def shifted_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token CE over supervised positions (labels ≠ −100), in fp32; 0 when nothing is supervised."""
    shift_logits = logits[:, :-1].float().flatten(0, 1)
    shift_labels = labels[:, 1:].flatten()
    if not (shift_labels != IGNORE_INDEX).any():
        return shift_logits.sum() * 0.0
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


def left_pad(embeds: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move right padding to the left (generation appends on the right). Shapes (B, T, D), (B, T)."""
    out_embeds, out_mask = torch.zeros_like(embeds), torch.zeros_like(mask)
    T = embeds.shape[1]
    for b, n in enumerate(mask.sum(dim=1).tolist()):
        out_embeds[b, T - n:] = embeds[b, :n]
        out_mask[b, T - n:] = True
    return out_embeds, out_mask


def valid_generated_mask(generated: Tensor, stop_token_ids: Sequence[int]) -> Tensor:
    """(B, N) True up to and including the first stop token of each row."""
    is_stop = torch.isin(generated, torch.tensor(list(stop_token_ids), device=generated.device))
    after_stop = (is_stop.long().cumsum(dim=1) - is_stop.long()) > 0
    return ~after_stop
