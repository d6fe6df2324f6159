"""internlm2_chat template: owned by the plugin, registered in xtuner's PROMPT_TEMPLATE for training
runs only."""
import subprocess
import sys

import xtuner.utils as xtuner_utils

from omg_llava.utils import constants
from omg_llava.utils.templates import INTERNLM2_CHAT, register_prompt_templates


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_template_strings():
    assert (
        INTERNLM2_CHAT.INSTRUCTION.format(input='hi')
        == '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n'
    )
    assert INTERNLM2_CHAT.SYSTEM.format(system='be brief') == ('<|im_start|>system\nbe '
                                                               'brief<|im_end|>\n')
    assert INTERNLM2_CHAT.SUFFIX == '<|im_end|>' and INTERNLM2_CHAT.SUFFIX_AS_EOS is True
    assert INTERNLM2_CHAT.SEP == '\n' and INTERNLM2_CHAT.STOP_WORDS == ['<|im_end|>']


def test_registered_on_import_when_xtuner_is_loaded_first():
    out = run_python('import xtuner.utils as x\n'
                     'import omg_llava.utils.templates as t\n'
                     'print(x.PROMPT_TEMPLATE.internlm2_chat == t.INTERNLM2_CHAT)')
    assert out.split()[-1] == 'True'


def test_importing_the_template_and_the_encoder_leaves_xtuner_unloaded():
    out = run_python('import sys\n'
                     'import omg_llava.utils.conversation, omg_llava.utils.templates\n'
                     'print(sorted(m for m in sys.modules if m.split(".")[0] == "xtuner"))')
    assert out.split('\n')[-2] == '[]'


def test_register_is_idempotent():
    register_prompt_templates()
    before = dict(xtuner_utils.PROMPT_TEMPLATE)
    register_prompt_templates()
    register_prompt_templates()
    after = xtuner_utils.PROMPT_TEMPLATE
    assert list(after.keys()) == list(before.keys())
    assert list(after.keys()).count('internlm2_chat') == 1
    assert after.internlm2_chat == INTERNLM2_CHAT
    # xtuner's own templates are untouched
    assert after.internlm_chat.INSTRUCTION == '<|User|>:{input}<eoh>\n<|Bot|>:'


def test_registered_copy_is_independent():
    register_prompt_templates()
    registered = xtuner_utils.PROMPT_TEMPLATE.internlm2_chat
    assert registered is not INTERNLM2_CHAT
    assert registered.STOP_WORDS is not INTERNLM2_CHAT.STOP_WORDS


def test_constants():
    assert constants.IMAGE_TOKEN_INDEX == xtuner_utils.IMAGE_TOKEN_INDEX == -200
    assert constants.IGNORE_INDEX == xtuner_utils.IGNORE_INDEX == -100
    assert constants.DEFAULT_PAD_TOKEN_ID == 0
    assert constants.DEFAULT_IMAGE_TOKEN == xtuner_utils.DEFAULT_IMAGE_TOKEN
    assert [constants.SEG_TOKEN, constants.PHRASE_START, constants.PHRASE_END,
            constants.REGION_TOKEN, constants.MARK_TOKEN] == [
                '[SEG]', '<p>', '</p>', '<region>', '<mark>']
    # 255 * mean gives the (122, 116, 104) padding colour of spec §1.1
    assert tuple(int(255 * m) for m in constants.CLIP_MEAN) == (122, 116, 104)
    # the released configs' 4-decimal statistics, which the weights were trained with
    assert (constants.CLIP_MEAN == (0.4814, 0.4578, 0.4082)
            and constants.CLIP_STD == (0.2686, 0.2613, 0.2757))
