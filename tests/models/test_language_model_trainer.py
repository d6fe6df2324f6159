"""The language stage of the tiny synthetic recipe: text-only LM training of a from-scratch LLM, and
its export as the Hugging Face folder an OMG-LLaVA config builds its LLM from."""
from __future__ import annotations

import torch

from omg_llava.assets import TINY_TOKENIZER_DIR
from omg_llava.datasets.collate import omg_llava_collate_fn
from omg_llava.models import LanguageModelTrainer, OMGLLaVA
from omg_llava.models.language_model_trainer import LANGUAGE_MODEL_FOLDER
from omg_llava.models.multimodal_inputs import drop_tokens
from omg_llava.models.llm import InternLM2Config, InternLM2ForCausalLM, InternLM2Tokenizer
from omg_llava.utils.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from omg_llava.utils.conversation import Turn, encode_conversation

TOKENIZER = dict(type=InternLM2Tokenizer.from_pretrained,
                 pretrained_model_name_or_path=TINY_TOKENIZER_DIR)
TINY_LLM = dict(type=InternLM2ForCausalLM,
                config=dict(type=InternLM2Config, vocab_size=1000, hidden_size=32,
                            intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                            max_position_embeddings=512))


def test_drop_tokens_removes_positions_and_repads():
    ids = torch.tensor([[1, -200, 5, 7, 9], [1, 8, -200, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 7, 9], [-100, -100, -100, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    out_ids, out_labels, out_mask = drop_tokens(ids, labels, mask, (IMAGE_TOKEN_INDEX, 7))
    assert out_ids.tolist() == [[1, 5, 9], [1, 8, 0]]
    assert out_labels.tolist() == [[-100, -100, 9], [-100, -100, IGNORE_INDEX]]
    assert out_mask.tolist() == [[True, True, True], [True, True, False]]


def _batch(trainer: LanguageModelTrainer) -> dict:
    """Two conversations with an image and visual prompts, collated as the finetune collates
    them."""
    tok = trainer.tokenizer
    rows = []
    for turns in ([Turn('There are some regions: region1 <region>. What colour is region1?',
                        'It is red.')],
                  [Turn('Please segment the small blue square in this image.',
                        '<p> The small blue square </p> [SEG].'),
                   Turn('What is at <mark>?', 'A circle.')]):
        encoded = encode_conversation(tok, turns)
        rows.append(dict(input_ids=torch.tensor(encoded.input_ids),
                         labels=torch.tensor(encoded.labels),
                         pixel_values=torch.zeros(3, 32, 32), masks=[], regions=[], points=[]))
    return omg_llava_collate_fn(rows)['data']


def test_loss_is_the_llm_loss_on_the_text_without_image_and_visual_prompts():
    torch.manual_seed(0)
    trainer = LanguageModelTrainer(TINY_LLM, TOKENIZER)
    data = _batch(trainer)
    placeholders = (IMAGE_TOKEN_INDEX, trainer.token_ids.region, trainer.token_ids.mark)
    assert all(torch.isin(data['input_ids'], torch.tensor([p])).any() for p in placeholders)
    loss = trainer(data)['loss_lm']
    # by hand: each conversation's text without the placeholders, one sequence at a time
    total, count = 0.0, 0
    for b in range(len(data['input_ids'])):
        keep = data['attention_mask'][b] & ~torch.isin(data['input_ids'][b],
                                                       torch.tensor(placeholders))
        ids, labels = data['input_ids'][b, keep][None], data['labels'][b, keep][None]
        logits = trainer.llm(input_ids=ids).logits[0, :-1]
        target = labels[0, 1:]
        total += torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX,
                                                   reduction='sum')
        count += int((target != IGNORE_INDEX).sum())
    torch.testing.assert_close(loss, total / count)
    loss.backward()
    assert trainer.llm.get_input_embeddings().weight.grad.abs().sum() > 0


def test_export_is_the_llm_an_omg_llava_config_builds_from(tmp_path):
    torch.manual_seed(1)
    trainer = LanguageModelTrainer(TINY_LLM, TOKENIZER)
    assert trainer.export(tmp_path) == [str(tmp_path / LANGUAGE_MODEL_FOLDER)]
    llm = dict(type=InternLM2ForCausalLM.from_pretrained,
               pretrained_model_name_or_path=str(tmp_path / 'llm'))
    encoder = dict(type='OMGSegVisualEncoder',
                   backbone=dict(type='ConvNeXtCLIPBackbone', depths=(1, 1, 1, 1),
                                 dims=(8, 16, 32, 64), clip_embed_dim=16),
                   panoptic_head=dict(type='OMGSegHead', in_channels=(8, 16, 32, 64),
                                      strides=(4, 8, 16, 32),
                                      feat_channels=32, num_queries=4, num_things_classes=2,
                                      num_stuff_classes=1,
                                      num_synonyms=1, clip_embed_dim=16, num_heads=2,
                                      pixel_decoder_layers=1,
                                      pixel_decoder_ffn_channels=32, decoder_layers=1,
                                      decoder_ffn_channels=32, num_feature_levels=3),
                   pixel_shuffle_ratio=1, frozen=True, weights=dict())
    model = OMGLLaVA(llm=llm, visual_encoder=encoder, tokenizer=TOKENIZER, llm_lora=None,
                     freeze_llm=False, use_activation_checkpointing=False)
    assert model.token_ids == trainer.token_ids  # same special-token rows: no resize on load
    exported = trainer.llm.state_dict()
    for key, value in model.llm.state_dict().items():
        assert torch.equal(value, exported[key]), key
