"""The ``internlm2_chat`` prompt template (spec §5.4), owned by the plugin, and its registration in
xtuner.

Inference (chat, app, ``tools/test.py``, export, ``segment_image``) reads the template from here and
never imports xtuner. xtuner is a training dependency only: when it is already loaded as this module
is imported (``xtuner train`` / ``python -m xtuner.tools.train`` load it before the config),
``internlm2_chat`` is added to ``xtuner.utils.PROMPT_TEMPLATE`` so xtuner-style configs can name it
there; a script that imports xtuner later calls :func:`register_prompt_templates` itself.
"""
import sys

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
    """Add the plugin's templates to ``xtuner.utils.PROMPT_TEMPLATE`` (imports xtuner).

    Idempotent; entries that xtuner already has (newer xtuner versions ship ``internlm2_chat``) are
    left as they are; each registered entry is a copy, so xtuner cannot change the plugin's
    template.

    Raises:
        ImportError: xtuner is not installed (it is needed for training only: ``pip install
            xtuner``).
    """
    from xtuner.utils import PROMPT_TEMPLATE as XTUNER_PROMPT_TEMPLATE

    for name, template in PROMPT_TEMPLATE.items():
        if name not in XTUNER_PROMPT_TEMPLATE:
            XTUNER_PROMPT_TEMPLATE[name] = ConfigDict(template)


# a training run: xtuner is loaded already, so registering costs no import
if 'xtuner' in sys.modules:
    register_prompt_templates()
