"""First-party InternLM2 (config, decoder, tokenizer), registered with the transformers Auto
classes.

After ``import omg_llava.models`` (or this package), ``AutoConfig`` / ``AutoModel`` /
``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained(folder)`` load a local
``internlm2-chat-7b`` folder with these classes, without ``trust_remote_code``. See
``docs/internlm2.md``.
"""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from .configuration import InternLM2Config
from .modeling import InternLM2ForCausalLM, InternLM2Model, InternLM2PreTrainedModel
from .tokenization import InternLM2Tokenizer


def register_auto_classes() -> None:
    """Map ``model_type == "internlm2"`` to these classes in the transformers Auto registries
    (idempotent)."""
    AutoConfig.register(InternLM2Config.model_type, InternLM2Config, exist_ok=True)
    AutoModel.register(InternLM2Config, InternLM2Model, exist_ok=True)
    AutoModelForCausalLM.register(InternLM2Config, InternLM2ForCausalLM, exist_ok=True)
    AutoTokenizer.register(InternLM2Config, slow_tokenizer_class=InternLM2Tokenizer, exist_ok=True)


register_auto_classes()

__all__ = ['InternLM2Config', 'InternLM2ForCausalLM', 'InternLM2Model', 'InternLM2PreTrainedModel',
           'InternLM2Tokenizer', 'register_auto_classes']
