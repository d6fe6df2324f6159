"""The OMG-LLaVA model: OMG-Seg visual encoder + projectors + InternLM2, with [SEG] masks (spec §1,
§4–6).

Data flow of one batch (:meth:`OMGLLaVA.forward`):

1. :meth:`encode_images`: pixels (B, 3, H, W) → frozen OMG-Seg → visual tokens → projector → one
   visual sequence (h·w + 1 + n_valid, D) per image, plus the image features that prompts and [SEG]
   decode over.
2. ``<region>`` / ``<mark>`` placeholders get one embedding each from their visual prompt
   (:mod:`~omg_llava.models.visual_prompts`), ``<image>`` (−200) gets the visual sequence
   (:func:`~omg_llava.models.multimodal_inputs.splice_multimodal_inputs`).
3. The LLM runs on the spliced embeddings; the final post-norm hidden state at every ``[SEG]`` input
   position goes through ``projector_text2vision`` and the OMG decoder into a mask.

Checkpoints hold only what the reference saves (:mod:`~omg_llava.models.save_filter`), under the
reference module paths (``llm.base_model.model.…``, ``projector.model.…``,
``projector_text2vision.model.…``).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import Tensor, nn

from omg_llava.registry import MODELS, build_component
from omg_llava.utils.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

from .generation import Decoded, DecodingOptions, KVCache, decode
from .lora import wrap_llm_with_lora
from .multimodal_inputs import (PromptCountError, SplicedInputs, count_placeholders,
                                placeholder_batch_indices, splice_multimodal_inputs)
from .omg_seg_encoder import VisualEncoderOutput
from .projectors import OMGVisualProjector, Text2VisionProjector
from .save_filter import filter_saved_keys
from .seg_heads.omg_seg_head import DecodeOutput, ImageFeatures
from .seg_losses import MaskLossConfig, pretrain_alignment_loss, seg_mask_losses
from .special_tokens import SpecialTokenIds, add_special_tokens, fit_embeddings
from .visual_prompts import VisualPrompt, encode_visual_prompts, prompts_from_tensors

if TYPE_CHECKING:
    from .auxiliary_losses import AuxiliaryLoss

STAGES = ('pretrain', 'finetune')
OWN_LOSSES = ('loss_lm', 'loss_proj', 'loss_dice', 'loss_mask')  # the released recipe's keys
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
        mask_logits: (n, H/4, W/4) mask logits on the network input square, one per ``[SEG]`` (last
            decoder step, before any upsampling; map them to the image with
            ``SquareGeometry.logits_to_original``). Empty when no image was given.
    """

    token_ids: Tensor
    seg_positions: Tensor
    mask_logits: Tensor


@dataclass
class SegQueries:
    """The ``[SEG]`` queries of a finetune batch that the mask losses supervised (auxiliary losses
    read them).

    Attributes:
        queries: (N, 2C) ``projector_text2vision`` outputs of the [SEG] hidden states.
        batch_idxs: (N,) sample of each [SEG].
        gt_masks: (N, H, W) the ground-truth mask of each [SEG] at the network input size.
        images: the batch's encoded images (``images.encoder_output`` holds the object queries).
    """

    queries: Tensor
    batch_idxs: Tensor
    gt_masks: Tensor
    images: EncodedImages


@dataclass
class PromptRows:
    """The visual-prompt embeddings the main pass spliced at the batch's placeholders (auxiliary
    losses reuse them instead of decoding the prompts again).

    Attributes:
        region: (R, D) one row per ``<region>`` of the batch in batch order (zero rows where a
            prompt was missing), or ``None`` without ``<region>``.
        mark: (M, D) the same for ``<mark>``.
        matched: whether the given prompts matched the placeholders (spec §6.4: the LM loss is
            zeroed otherwise).
    """

    region: Tensor | None
    mark: Tensor | None
    matched: bool


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
        llm: the causal LM (module or xtuner-style config dict, e.g.
            ``dict(type=AutoModelForCausalLM .from_pretrained,
            pretrained_model_name_or_path=...)``).
        visual_encoder: :class:`~omg_llava.models.OMGSegVisualEncoder` (module or config).
        tokenizer: the LLM tokenizer (module or config). The special tokens are added to it. Without
            one, the ids follow the base vocabulary (``special_token_ids`` overrides).
        stage: ``'pretrain'`` (LM loss + 10·MSE alignment of ``projector_text2vision``) or
            ``'finetune'`` (LM loss + [SEG] mask losses).
        llm_lora: a ``peft.LoraConfig`` or its arguments; ``None`` keeps the LLM unwrapped.
        freeze_llm: freeze the LLM base weights (LoRA and the vocabulary tensors still train in
            finetune). ``False`` trains the whole LLM and saves it in the checkpoint (tiny models
            trained from scratch).
        projector_depth: depth of both projector MLPs.
        mask_loss: :class:`~omg_llava.models.seg_losses.MaskLossConfig` or its fields.
        pretrain_loss_weight: weight of the pretrain alignment MSE.
        auxiliary_losses: extra training terms outside the released recipe (which has none), each an
            :class:`~omg_llava.models.auxiliary_losses.AuxiliaryLoss` or its config, e.g.
            ``[dict(type=ObjectTokenHintLoss, weight=1.0)]``; each adds its ``loss_*`` key.
        use_activation_checkpointing: gradient checkpointing in the LLM.
        max_length: longest spliced sequence (text + visual tokens) accepted by :meth:`generate`;
            default the LLM's ``max_position_embeddings``.
        pretrained_pth: a released-format checkpoint loaded by :meth:`init_weights`.
        special_token_ids: explicit ``SpecialTokenIds`` fields (for exports whose vocabulary is
            resized).
        data_preprocessor: mmengine data preprocessor config.
    """

    def __init__(self, llm: nn.Module | dict, visual_encoder: nn.Module | dict,
                 tokenizer: Any = None,
                 stage: str = 'finetune', llm_lora: Any = None, freeze_llm: bool = True,
                 projector_depth: int = 2, mask_loss: MaskLossConfig | dict | None = None,
                 pretrain_loss_weight: float = 10.0,
                 auxiliary_losses: Sequence[AuxiliaryLoss | dict] = (),
                 use_activation_checkpointing: bool = True, max_length: int | None = None,
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
        self.projector = OMGVisualProjector(
            query_channels=self.visual_encoder.query_channels,
            clip_channels=self.visual_encoder.pixel_shuffled_channels,
            llm_hidden_size=hidden,
            depth=projector_depth,
        )
        self.projector_text2vision = Text2VisionProjector(
            llm_hidden_size=hidden,
            query_channels=self.visual_encoder.query_channels,
            depth=projector_depth,
        )
        self.mask_loss = (mask_loss if isinstance(mask_loss, MaskLossConfig)
                          else MaskLossConfig(**(mask_loss or {})))
        self.pretrain_loss_weight = pretrain_loss_weight
        self.auxiliary_losses = build_auxiliary_losses(auxiliary_losses)
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
        """Load the visual-encoder files named in its config, then ``pretrained_pth`` (never at
        construction)."""
        self.visual_encoder.init_weights()
        if self.pretrained_pth:
            from .released_weights import load_released_checkpoint
            load_released_checkpoint(self, self.pretrained_pth)

    def state_dict(self, *args, **kwargs) -> 'OrderedDict[str, Tensor]':
        """Only what the released checkpoints hold (spec §5.3); see
        :mod:`~omg_llava.models.save_filter`."""
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get('prefix', args[1] if len(args) > 1 else '')
        return filter_saved_keys(full, prefix,
                                 self.visual_encoder.panoptic_head.with_llm_decoder_copy,
                                 with_full_llm=not self.freeze_llm)

    # ------------------------------------------------------------------ encoding
    def encode_images(self, pixel_values: Tensor) -> EncodedImages:
        """(B, 3, H, W) normalised square images → :class:`EncodedImages` (encoder in its own
        dtype). A frozen encoder runs without gradients; an unfrozen one (e.g. a tiny model's
        segmentation pre-stage) trains."""
        encoder_output = self.visual_encoder(pixel_values)
        dtype = self.projector.model.seperate_embed.weight.dtype
        pixel_tokens, query_tokens, blocked = encoder_output.visual_tokens()
        sequences = self.projector(pixel_tokens.to(dtype), query_tokens.to(dtype), blocked)
        return EncodedImages(encoder_output, sequences)

    def prompt_embeddings(self, prompts: Sequence[VisualPrompt],
                          images: EncodedImages | None) -> Tensor | None:
        """(N, D) LLM embeddings of visual prompts (``None`` when there are none)."""
        if not prompts:
            return None
        if images is None:
            raise PromptCountError(f'{len(prompts)} visual prompt(s) given without an image: '
                                   'prompts point into an image, so pass the image too')
        features = encode_visual_prompts(self.visual_encoder, prompts, images.features)
        return self.projector.project_queries(
            features.to(self.projector.model.query_proj.weight.dtype)
        )

    def splice(self, input_ids: Tensor, attention_mask: Tensor | None = None,
               labels: Tensor | None = None,
               images: EncodedImages | None = None, region_prompts: Sequence[VisualPrompt] = (),
               mark_prompts: Sequence[VisualPrompt] = ()) -> SplicedInputs:
        """Token ids with placeholders → LLM input embeddings (strict: counts must match)."""
        sequences = None if images is None else images.visual_sequences
        if sequences is not None and len(sequences) != len(input_ids):
            raise PromptCountError(f'{len(sequences)} images for {len(input_ids)} sequences; give '
                                   'one image per sequence (a zero image for text-only samples)')
        return splice_multimodal_inputs(input_ids, self.llm.get_input_embeddings(), self.token_ids,
                                        attention_mask=attention_mask, labels=labels,
                                        visual_sequences=sequences,
                                        region_embeds=self.prompt_embeddings(region_prompts,
                                                                             images),
                                        mark_embeds=self.prompt_embeddings(mark_prompts, images))

    def run_llm(self, spliced: SplicedInputs):
        """LLM forward with every hidden state; the last one is post-norm (the [SEG] source)."""
        return self.llm(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                        position_ids=spliced.position_ids, output_hidden_states=True,
                        use_cache=False, return_dict=True)

    def decode_seg_masks(self, seg_hidden_states: Tensor, batch_idxs: Tensor,
                         images: EncodedImages) -> list[Tensor]:
        """[SEG] hidden states (N, D) → per decoder step (N, 1, H/4, W/4) mask logits (spec
        §6.1)."""
        return self.decode_seg_queries(self.projector_text2vision(seg_hidden_states), batch_idxs,
                                       images).mask_logits

    def decode_seg_queries(self, queries: Tensor, batch_idxs: Tensor,
                           images: EncodedImages) -> DecodeOutput:
        """[SEG] queries (N, 2C) (``projector_text2vision`` outputs) → every decoder step:
        ``.mask_logits[j]`` (N, 1, H/4, W/4)."""
        return self.visual_encoder.decode_seg_queries(queries, batch_idxs, images.features)

    # ------------------------------------------------------------------ mmengine entry point
    def forward(self, data: dict, data_samples: Any = None, mode: str = 'loss',
                **generation_kwargs):
        """``loss`` → dict of losses; ``predict`` → list of :class:`GenerationOutput`; ``tensor`` →
        LLM output.

        ``data`` keys: ``input_ids`` (B, L), ``attention_mask`` (B, L), ``labels`` (B, L) for
        ``loss``, ``pixel_values`` (B, 3, H, W) (one image per sample; text-only samples carry any
        image), ``masks`` (list of B tensors (n_b, H, W), one per ``[SEG]`` of the answer, for
        ``loss``), ``regions`` (N, H, W) masks for the ``<region>`` tokens and ``points`` (N, 2) (x,
        y) for the ``<mark>`` tokens, both in batch-then-position order and network-input pixels.
        ``generation_kwargs`` go to :meth:`generate`.
        """
        if mode == 'loss':
            return self.compute_loss(data)
        if mode == 'predict':
            return self.predict(data, **generation_kwargs)
        if mode == 'tensor':
            images = self._encode_batch_images(data)
            return self.run_llm(self.splice(data['input_ids'], data.get('attention_mask'),
                                            data.get('labels'),
                                            images, *self._batch_prompts(data, strict=True)[:2]))
        raise ValueError(f'mode must be loss, predict or tensor, got {mode!r}')

    def _encode_batch_images(self, data: dict) -> EncodedImages | None:
        pixel_values = data.get('pixel_values')
        if pixel_values is None:
            return None
        needs_images = (self.stage == 'pretrain'
                        or bool((data['input_ids'] == IMAGE_TOKEN_INDEX).any()))
        return self.encode_images(pixel_values) if needs_images else None

    def _batch_prompts(self, data: dict,
                       strict: bool) -> tuple[list[VisualPrompt], list[VisualPrompt], bool]:
        """``regions`` → ``<region>`` mask prompts and ``points`` → ``<mark>`` point prompts,
        assigned to samples in placeholder order. Non-strict (training): extra prompts are dropped,
        missing ones later become zero rows, and the flag is False (spec §6.4: the batch's LM loss
        is then zeroed)."""
        ids, mask = data['input_ids'], data.get('attention_mask')
        out, matched = [], True
        for kind, key, token_id in (
            ('mask', 'regions', self.token_ids.region),
            ('point', 'points', self.token_ids.mark),
        ):
            values = data.get(key)
            idx = placeholder_batch_indices(ids, mask, token_id)
            given = 0 if values is None else len(values)
            if given != len(idx):
                if strict:
                    raise PromptCountError(f'the text holds {len(idx)} '
                                           f'{"<region>" if key == "regions" else "<mark>"} '
                                           f'placeholder(s) but {given} {key} were given')
                matched = False
            n = min(given, len(idx))
            out.append(prompts_from_tensors(kind, values[:n] if n else None, idx[:n]))
        return out[0], out[1], matched

    # ------------------------------------------------------------------ loss
    def compute_loss(self, data: dict) -> dict[str, Tensor]:
        """``loss_lm`` (LM cross-entropy) + (finetune) ``loss_dice`` / ``loss_mask`` of the [SEG]
        masks or (pretrain) ``loss_proj``, then one key per auxiliary loss; mmengine sums every
        ``loss*`` entry and logs the sum as ``loss``."""
        images = self._encode_batch_images(data)
        region_prompts, mark_prompts, prompts_matched = self._batch_prompts(data, strict=False)
        ids, mask = data['input_ids'], data.get('attention_mask')
        region_embeds = self._fitted_prompt_rows(region_prompts, images, ids, mask,
                                                 self.token_ids.region)
        mark_embeds = self._fitted_prompt_rows(mark_prompts, images, ids, mask, self.token_ids.mark)
        spliced = splice_multimodal_inputs(
            ids, self.llm.get_input_embeddings(), self.token_ids, attention_mask=mask,
            labels=data['labels'], region_embeds=region_embeds, mark_embeds=mark_embeds,
            visual_sequences=None if images is None else images.visual_sequences)
        out = self.run_llm(spliced)
        losses = {'loss_lm': shifted_cross_entropy(out.logits, spliced.labels)}
        if not prompts_matched:
            self.loss_info.prompt_mismatch_batches += 1
            print_log('visual-prompt count differs from the <region>/<mark> placeholders '
                      '(truncation?): the LM loss of this batch is zeroed '
                      f'({self.loss_info.prompt_mismatch_batches} batches so far)',
                      logger='current', level=30)
            losses['loss_lm'] = losses['loss_lm'] * 0.0
        seg = None
        if self.stage == 'pretrain':
            if images is not None:
                enc = images.encoder_output
                losses['loss_proj'] = pretrain_alignment_loss(
                    enc.query_tokens.to(self.projector.model.query_proj.weight.dtype),
                    enc.query_blocked,
                    self.projector.project_queries, self.projector_text2vision,
                    self.pretrain_loss_weight)
        else:
            seg_losses, seg = self._seg_losses(out.hidden_states[-1], spliced.labels,
                                               data.get('masks'), images)
            losses.update(seg_losses)
        prompts = PromptRows(region_embeds, mark_embeds, prompts_matched)
        for term in self.auxiliary_losses:
            losses[term.name] = term(self, data, out, seg, prompts)
        return losses

    def _fitted_prompt_rows(self, prompts: list[VisualPrompt], images: EncodedImages | None,
                            ids: Tensor, mask: Tensor | None, token_id: int) -> Tensor | None:
        """Prompt embeddings padded with zero rows up to the placeholder count."""
        needed = int(count_placeholders(ids, mask, token_id).sum())
        if needed == 0:
            return None
        rows = self.llm.get_input_embeddings().weight.new_zeros((needed,
                                                                 self.llm.config.hidden_size))
        embeds = self.prompt_embeddings(prompts, images)
        if embeds is not None:
            rows = torch.cat([embeds.to(rows.dtype), rows[len(embeds):]])
        return rows

    def _seg_losses(self, hidden: Tensor, labels: Tensor, masks: Sequence[Tensor] | None,
                    images: EncodedImages | None) -> tuple[dict[str, Tensor], SegQueries | None]:
        """Mask losses over samples whose [SEG] count equals their mask count (a zero-weighted pass
        when there are none), and the supervised [SEG] queries (``None`` then).

        Args:
            hidden: (B, T, D) last (post-norm) LLM hidden states of the spliced batch.
            labels: (B, T) spliced labels; ``[SEG]`` marks the positions whose state is decoded.
            masks: per sample, (n_b, H, W) ground truths, one per ``[SEG]`` (or ``None``).
            images: the batch's encoded images.
        """
        seg_positions = labels == self.token_ids.seg  # (B, T) — [SEG] as input token, no shift
        seg_counts = seg_positions.sum(dim=1).tolist()
        mask_counts = [0 if m is None else len(m) for m in (masks or [None] * len(labels))]
        matched = [b for b, (s, m) in enumerate(zip(seg_counts, mask_counts)) if s == m and s > 0]
        mismatched = sum(1 for s, m in zip(seg_counts, mask_counts) if s != m)
        if mismatched:
            self.loss_info.seg_mismatch_samples += mismatched
            print_log(f'{mismatched} sample(s) have a [SEG] count different from their mask count '
                      '(truncation?); their mask losses are skipped '
                      f'({self.loss_info.seg_mismatch_samples} so far)', logger='current', level=30)
        if not matched or images is None:
            # keeps every trainable in the graph
            dummy = self.projector_text2vision(hidden[:, 0]).sum() * 0.0
            return {'loss_dice': dummy, 'loss_mask': dummy}, None
        keep = torch.zeros_like(seg_positions)
        keep[matched] = seg_positions[matched]
        batch_idxs = keep.nonzero()[:, 0]
        queries = self.projector_text2vision(hidden[keep])  # (N, 2C)
        decoded = self.decode_seg_queries(queries, batch_idxs, images)
        gt = torch.cat([masks[b] for b in matched]).to(decoded.mask_logits[0].device)  # (N, H, W)
        losses = seg_mask_losses(decoded.mask_logits, gt, self.mask_loss)
        return losses, SegQueries(queries, batch_idxs, gt, images)

    # ------------------------------------------------------------------ generation
    def predict(self, data: dict, **generation_kwargs) -> list[GenerationOutput]:
        """Generate answers for a collated batch (``regions`` / ``points`` as in ``loss`` mode)."""
        images = self._encode_batch_images(data)
        region_prompts, mark_prompts, _ = self._batch_prompts(data, strict=True)
        return self.generate(data['input_ids'], data.get('attention_mask'), images, region_prompts,
                             mark_prompts, **generation_kwargs)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                 images: EncodedImages | None = None,
                 region_prompts: Sequence[VisualPrompt] = (),
                 mark_prompts: Sequence[VisualPrompt] = (),
                 max_new_tokens: int = 100, kv_cache: KVCache | None = None,
                 **generation_kwargs) -> list[GenerationOutput]:
        """Answer prompts and decode one mask per generated ``[SEG]``.

        One prefill (LM head on the last position only), then one token per step; the ``[SEG]``
        hidden states are collected while decoding (:func:`~omg_llava.models.generation.decode`),
        with no second pass.

        Args:
            input_ids: (B, L) right-padded prompt ids with placeholders (see :meth:`forward`).
            attention_mask: (B, L).
            images: from :meth:`encode_images` (required when a prompt holds ``<image>``).
            region_prompts / mark_prompts: one prompt per ``<region>`` / ``<mark>``, in order.
            max_new_tokens: generation budget.
            kv_cache: a conversation's cache (batch 1): when ``input_ids`` begin with the ids it
                holds, only the new positions are prefilled; it is updated to hold the prompt and
                the fed answer.
            generation_kwargs: decoding options (``do_sample``, ``temperature``, ``top_p``,
                ``top_k``, ``repetition_penalty``, ``sequence_bias``, ``logits_processor``,
                ``streamer``; see :class:`~omg_llava.models.generation.DecodingOptions`).

        Raises:
            PromptCountError: placeholders and prompts/images disagree.
            PromptTooLongError: the spliced prompt exceeds ``max_length``.
            ValueError: an unsupported generation argument, or ``kv_cache`` with a batch of several
                prompts.
        """
        options = DecodingOptions.from_kwargs(**{
            'max_new_tokens': max_new_tokens, 'eos_token_id': self.stop_token_ids,
            'pad_token_id': self.stop_token_ids[0] if self.stop_token_ids else 0,
            **generation_kwargs})
        if kv_cache is not None and len(input_ids) != 1:
            raise ValueError(f'a kv_cache holds one conversation; got a batch of {len(input_ids)} '
                             'prompts')
        spliced = self.splice(input_ids, attention_mask, None, images, region_prompts, mark_prompts)
        lengths = spliced.attention_mask.sum(dim=1)
        if int(lengths.max()) >= self.max_length:
            raise PromptTooLongError(f'the prompt is {int(lengths.max())} tokens long with its '
                                     f'visual tokens, over the model limit of {self.max_length}; '
                                     'shorten the question or reset the conversation history')
        embeds, mask = left_pad(spliced.inputs_embeds, spliced.attention_mask)
        cached = 0 if kv_cache is None else kv_cache.reusable(input_ids[0].tolist())
        try:
            decoded = decode(self.llm, embeds[:, cached:], mask[:, cached:], options,
                             cache=kv_cache.cache if cached else None,
                             needs_state=self.token_ids.seg if images is not None else None)
        except BaseException:
            if kv_cache is not None:
                kv_cache.clear()  # the cache may hold part of this turn
            raise
        if kv_cache is not None:
            kv_cache.cache, kv_cache.length = decoded.cache, embeds.shape[1] + decoded.fed
            kv_cache.ids = input_ids[0].tolist() + decoded.token_ids[0, :decoded.fed].tolist()
        keep = valid_generated_mask(decoded.token_ids, self.stop_token_ids)  # (B, N)
        return self._outputs_with_masks(decoded, keep, images)

    def _outputs_with_masks(self, decoded: Decoded, keep: Tensor,
                            images: EncodedImages | None) -> list[GenerationOutput]:
        """Decode a mask from the post-norm state collected at every generated [SEG] input
        position."""
        generated = decoded.token_ids
        seg = (generated == self.token_ids.seg) & keep
        B = len(generated)
        mask_logits: list[Tensor] = [decoded.hidden_states.new_zeros((0, 0, 0)) for _ in range(B)]
        if seg.any() and images is not None:
            steps = self.decode_seg_masks(decoded.hidden_states[seg], seg.nonzero()[:, 0], images)
            # (n_b, H/4, W/4) each
            mask_logits = list(steps[-1][:, 0].float().split(seg.sum(dim=1).tolist()))
        return [GenerationOutput(generated[b][keep[b]], seg[b][keep[b]].nonzero().flatten(),
                                 mask_logits[b])
                for b in range(B)]


def build_auxiliary_losses(configs: Sequence[AuxiliaryLoss | dict]) -> list[AuxiliaryLoss]:
    """Build each auxiliary loss (an instance passes as is); their ``loss_*`` names must differ from
    each other and from the model's own losses."""
    terms = [build_component(c) for c in configs]
    names = [getattr(t, 'name', None) for t in terms]
    for term, name in zip(terms, names):
        if not callable(term) or not isinstance(name, str) or not name.startswith('loss_'):
            raise TypeError(f'auxiliary_losses holds {term!r}, not an AuxiliaryLoss with a '
                            'loss_* name; give instances or configs of the classes of '
                            'omg_llava.models.auxiliary_losses')
        if name in OWN_LOSSES or names.count(name) > 1:
            raise ValueError(f'auxiliary loss name {name!r} is taken (own losses {OWN_LOSSES}, '
                             f'auxiliary {names}); give each term its own name')
    return terms


def shifted_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token CE over supervised positions (labels ≠ −100), in fp32; 0 when nothing is
    supervised."""
    shift_logits = logits[:, :-1].float().flatten(0, 1)
    shift_labels = labels[:, 1:].flatten()
    if not (shift_labels != IGNORE_INDEX).any():
        return shift_logits.sum() * 0.0
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


def left_pad(embeds: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move right padding to the left (generation appends on the right). Shapes (B, T, D), (B,
    T)."""
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
