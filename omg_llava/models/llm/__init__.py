"""Language models used by OMG-LLaVA; importing this package registers InternLM2 with
transformers."""
from .internlm2 import (InternLM2Config, InternLM2ForCausalLM, InternLM2Model, InternLM2Tokenizer,
                        register_auto_classes)

__all__ = ['InternLM2Config', 'InternLM2ForCausalLM', 'InternLM2Model', 'InternLM2Tokenizer',
           'register_auto_classes']
