"""The question and answer lists are the released code's, verbatim (shared/spec/prompts.md), and the
training encoder places `<image>\\n` before the first question as the reference's template does
(spec §5.4)."""
from __future__ import annotations

import hashlib
import json

import pytest

from omg_llava.assets import TINY_TOKENIZER_DIR
from omg_llava.datasets.region_templates import REGION_CAPTION_QUESTIONS, fill_region_question
from omg_llava.datasets.templates import (GCG_FORMAT_ANSWER, GCG_QUESTIONS, REFERRING_SEG_QUESTIONS,
                                          SEG_ANSWERS,
                                          SEMANTIC_SEG_QUESTIONS, seg_answer, seg_question)
from omg_llava.models.llm import InternLM2Tokenizer
from omg_llava.utils.conversation import Turn, encode_conversation


def digest(strings) -> str:
    """sha256 of the list as JSON: the values below were computed from the lists in
    shared/spec/prompts.md."""
    return hashlib.sha256(json.dumps(list(strings)).encode()).hexdigest()


def test_lists_are_the_released_ones_verbatim():
    # GCG: the reference writes DEFAULT_IMAGE_TOKEN + question; the lists here hold the question
    assert len(GCG_QUESTIONS) == 6
    assert digest('<image>' + q for q in GCG_QUESTIONS) == \
        '982b83729ad439914ad226dacbb447c96ef57ce8cde0105b2088a6d25a1ae530'
    assert GCG_QUESTIONS[1] == ('Can you provide a thorough description of the this image? Please '
                                'output with interleaved segmentation masks for the corresponding '
                                'phrases.')  # typo kept
    assert SEMANTIC_SEG_QUESTIONS == REFERRING_SEG_QUESTIONS and len(SEMANTIC_SEG_QUESTIONS) == 16
    assert (
        digest(SEMANTIC_SEG_QUESTIONS)
        == '61e9367e4f3eaaccb7659f1f40ae337eaeb336694439618ad9b72ac52513ee59'
    )
    # no final '?'
    assert SEMANTIC_SEG_QUESTIONS[4] == 'Can you segment the {class_name} in this image'
    assert digest(SEG_ANSWERS) == '980e3383deb9ce0f238fc009b2a3965c970c28076ebf4060d731a4c555890bac'
    assert (
        digest([GCG_FORMAT_ANSWER])
        == '6df74b2e3a7f3a740c596459c6fdbbf12b19f2c88c728848144dc534d954aa7d'
    )
    assert len(REGION_CAPTION_QUESTIONS) == 20
    assert (
        digest(REGION_CAPTION_QUESTIONS)
        == 'ff454b97f9719ce2121df938f3c73499083513a67379961adb23f2d85d3059ca'
    )


def test_phrase_writing_as_the_reference():
    assert seg_question(SEMANTIC_SEG_QUESTIONS[1], ' The Man In RED. ') == \
        'Please segment the man in red. in this image.'
    # .lower().capitalize(), '.' kept
    assert seg_answer(' The Man In RED. ') == '<p> The man in red. </p> [SEG].'
    assert seg_answer('region2') == '<p> Region2 </p> [SEG].'
    assert fill_region_question(REGION_CAPTION_QUESTIONS[2], 2) == \
        'What can you tell me about the region indicated by region2 <region> in the image?'
    with pytest.raises(ValueError, match='exactly one'):
        fill_region_question('no placeholder', 1)


def test_first_question_gets_image_and_newline_like_the_reference_template():
    """The reference turns '<image>' + question into '<image>\\n' + question (stripped); later
    questions and the answers are encoded as written."""
    tokenizer = InternLM2Tokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    ours = encode_conversation(tokenizer, [Turn(GCG_QUESTIONS[0], 'A. '), Turn(' Again? ', 'B.')])
    by_hand = encode_conversation(tokenizer,
                                  [Turn('<image>\n' + GCG_QUESTIONS[0], 'A. '),
                                   Turn(' Again? ', 'B.')],
                                  with_image=True)
    assert ours.input_ids == by_hand.input_ids
    text = tokenizer.decode([i for i in ours.input_ids if i >= 0])
    assert '<|im_start|>user\n Again? <|im_end|>' in text and 'A. <|im_end|>' in text
