"""Prompt templates missing from xtuner 0.1.11, and their registration in xtuner.

Configs can import a template directly (``from omg_llava.utils.templates import INTERNLM2_CHAT``)
or, after ``import omg_llava.utils``, use ``xtuner.utils.PROMPT_TEMPLATE.internlm2_chat``.
The strings follow the InternLM2 chat format (spec §5.4).
"""
from importlib.util import find_spec

from mmengine.config import ConfigDict

# A ConfigDict, because xtuner reads templates by attribute (``template.INSTRUCTION``).
INTERNLM2_CHAT = ConfigDict(
    SYSTEM='<|im_start|>system\n{system}<|im_end|>\n',
    INSTRUCTION='<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n',
    SUFFIX='<|im_end|>',
    SUFFIX_AS_EOS=True,
    SEP='\n',
    STOP_WORDS=['<|im_end|>'],
)

# The plugin's own templates, by the name xtuner uses for them.
PROMPT_TEMPLATE = ConfigDict(internlm2_chat=INTERNLM2_CHAT)


def register_prompt_templates() -> None:
    """Add the plugin's templates to ``xtuner.utils.PROMPT_TEMPLATE``.

    Idempotent; entries that xtuner already has (newer xtuner versions ship ``internlm2_chat``)
    are left as they are. Does nothing when xtuner is not installed.
    """
    if find_spec('xtuner') is None:
        return
    from xtuner.utils import PROMPT_TEMPLATE as XTUNER_PROMPT_TEMPLATE

    for name, template in PROMPT_TEMPLATE.items():
        if name not in XTUNER_PROMPT_TEMPLATE:
            XTUNER_PROMPT_TEMPLATE[name] = ConfigDict(template)


register_prompt_templates()  # importing this module makes 'internlm2_chat' available to xtuner
