"""One-prefill decoding on the tiny model: the same ids as transformers' generate, the same [SEG]
masks as a second pass over prompt + answer, last-position logits, and a chat's KV cache kept
between turns."""
from __future__ import annotations

import pytest
import torch
from skimage import data
from transformers import LogitsProcessorList
from transformers.cache_utils import DynamicCache

from omg_llava.inference.chat import OMGLLaVAChat
from omg_llava.inference.image_io import preprocess_image, to_rgb_image
from omg_llava.models.generation import DecodingOptions, decode, forward_last
from omg_llava.models.omg_llava import left_pad

from conftest import TINY_CONFIG

CAT = data.chelsea()  # 300 x 451 RGB
QUESTION = 'Please segment the cat in this image.'


@pytest.fixture(scope='module')
def chat() -> OMGLLaVAChat:
    return OMGLLaVAChat.from_config(str(TINY_CONFIG), seed=0)[0]


@pytest.fixture(scope='module')
def prompt(chat):
    """Left-padded (2, T, D) prompt embeddings of two questions of different lengths about the cat,
    their mask, ids and the encoded image pair."""
    pixels, _ = preprocess_image(to_rgb_image(CAT), chat.image_size)
    images = chat.model.encode_images(torch.stack([pixels, pixels]).to(chat.device))
    rows = [chat._prompt_ids(q)
            for q in (QUESTION, 'Where is the cat? Please respond with segmentation mask.')]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.bool)
    with torch.no_grad():
        spliced = chat.model.splice(ids, mask, None, images)
    embeds, mask = left_pad(spliced.inputs_embeds, spliced.attention_mask)
    return embeds, mask, ids, images


def _forcing(ids: list[int]) -> LogitsProcessorList:
    def force(generated, scores):
        forced = torch.full_like(scores, -float('inf'))
        forced[:, ids[min(generated.shape[1], len(ids) - 1)]] = 0.0
        return forced
    return LogitsProcessorList([force])


def test_greedy_and_sampled_ids_equal_transformers_generate(chat, prompt):
    embeds, mask, _, _ = prompt
    llm = chat.model.llm
    stops = chat.model.stop_token_ids
    for sampling in (dict(do_sample=False),
                     dict(do_sample=True, temperature=0.7, top_k=40, top_p=0.75),
                     dict(do_sample=False, repetition_penalty=1.3)):
        kwargs = dict(max_new_tokens=12, eos_token_id=stops, pad_token_id=stops[0], **sampling)
        torch.manual_seed(3)
        ours = decode(llm, embeds, mask, DecodingOptions.from_kwargs(**kwargs)).token_ids
        torch.manual_seed(3)
        with torch.no_grad():
            theirs = llm.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        assert torch.equal(ours, theirs), sampling


def test_collected_seg_states_give_the_masks_of_a_second_pass(chat, prompt):
    embeds, mask, ids, images = prompt
    model = chat.model
    seg, other = model.token_ids.seg, chat.tokenizer.convert_tokens_to_ids('at')
    # [SEG] inside the answer, and as the last token cut by max_new_tokens (fed once more for its
    # state)
    forcing = _forcing([other, seg, other, seg])
    outputs = model.generate(ids, ids.ne(0), images, max_new_tokens=4, logits_processor=forcing)
    generated = torch.stack([o.token_ids for o in outputs])  # (2, 4): no stop token, nothing cut
    assert generated.tolist() == [[other, seg, other, seg]] * 2
    # the former way: run prompt + answer once more and read the last hidden state at each [SEG]
    with torch.no_grad():
        full = torch.cat([embeds, model.llm.get_input_embeddings()(generated)], dim=1)
        full_mask = torch.cat([mask, torch.ones_like(generated, dtype=torch.bool)], dim=1)
        out = model.llm(inputs_embeds=full, attention_mask=full_mask,
                        position_ids=(full_mask.long().cumsum(-1) - 1).clamp(min=0),
                        output_hidden_states=True)
        hidden = out.hidden_states[-1][:, embeds.shape[1]:]
        is_seg = generated == seg
        expected = model.decode_seg_masks(hidden[is_seg], is_seg.nonzero()[:, 0], images)[-1][
            :, 0
        ].float()
    ours = torch.cat([o.mask_logits for o in outputs])
    assert ours.shape == expected.shape and [len(o.mask_logits) for o in outputs] == [2, 2]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(ours > 0, expected > 0)
    assert [o.seg_positions.tolist() for o in outputs] == [[1, 3], [1, 3]]


def test_prefill_logits_are_the_last_position_of_the_full_logits(chat, prompt):
    embeds, mask, _, _ = prompt
    llm = chat.model.llm
    with torch.no_grad():
        full = llm(inputs_embeds=embeds, attention_mask=mask,
                   position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0)).logits  # (2, T, V)
        hidden, last = forward_last(llm, embeds, mask, (mask.long().cumsum(-1) - 1).clamp(min=0),
                                    DynamicCache())
    assert last.shape == (2, full.shape[-1]) and hidden.shape == embeds.shape
    torch.testing.assert_close(last, full[:, -1], atol=1e-5, rtol=1e-5)


def test_unsupported_generation_arguments_are_refused(chat):
    with pytest.raises(ValueError, match=r"unsupported generation argument\(s\) \['num_beams'\]"):
        DecodingOptions.from_kwargs(max_new_tokens=2, num_beams=2)


def _prefill_lengths(chat, monkeypatch) -> list[int]:
    """Record the number of positions of every decoder call."""
    lengths = []
    decoder = (chat.model.llm.get_base_model() if hasattr(chat.model.llm, 'get_base_model')
               else chat.model.llm)
    decoder = decoder.get_decoder()
    forward = decoder.forward
    monkeypatch.setattr(decoder, 'forward',
                        lambda **kw: lengths.append(kw['inputs_embeds'].shape[1]) or forward(**kw))
    return lengths


def test_follow_up_prefills_only_its_new_tokens_and_answers_as_a_fresh_prefill(chat, monkeypatch):
    seg, other = chat.model.token_ids.seg, chat.tokenizer.convert_tokens_to_ids('at')
    im_end = chat.tokenizer.convert_tokens_to_ids('<|im_end|>')
    # closed by im_end
    turns = [(QUESTION, dict(max_new_tokens=5, logits_processor=_forcing([other, seg, im_end]))),
             ('And the other one?',
              dict(max_new_tokens=3, logits_processor=_forcing([seg, other, seg]))),  # cut
             ('What is it doing?', dict(max_new_tokens=6)),  # a free greedy answer
             ('Segment it again.', dict(max_new_tokens=2, sequence_bias={(seg, ): 100.0}))]
    lengths = _prefill_lengths(chat, monkeypatch)
    runs = {}
    for reuse in (True, False):
        chat.set_image(CAT)
        runs[reuse] = []
        for question, kwargs in turns:
            if not reuse:
                chat._conversation.kv_cache.clear()
            prompt_ids = len(chat._prompt_ids(question))
            lengths.clear()
            runs[reuse].append((chat.ask(question, **kwargs), prompt_ids, lengths[0]))
    # positions added by the <image> id's visual sequence
    visual = runs[False][0][2] - runs[False][0][1]
    cached_ids = 0
    for turn, ((cached, prompt_ids, prefill), (fresh, _, fresh_prefill)) in enumerate(
        zip(runs[True], runs[False])
    ):
        assert cached.token_ids == fresh.token_ids and cached.text == fresh.text, turn
        assert len(cached.masks) == len(fresh.masks) == cached.token_ids.count(seg)
        for a, b in zip(cached.masks, fresh.masks):
            # the same masks up to float rounding at a few boundary pixels
            assert (a != b).mean() < 1e-3
        # without the cache every turn prefills everything
        assert fresh_prefill == prompt_ids + visual
        # with it, a follow-up prefills only the ids after those fed before (the stop id was never
        # fed; a [SEG] cut by max_new_tokens was, for its state)
        assert prefill == (fresh_prefill if turn == 0 else prompt_ids - cached_ids), turn
        cached_ids = prompt_ids + len(cached.token_ids) - (cached.token_ids[-1] != seg)
    assert (runs[True][1][0].token_ids == [seg, other, seg]
            and runs[True][0][0].token_ids == [other, seg, im_end])
