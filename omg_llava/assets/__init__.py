"""Small files shipped with the package: the tiny InternLM2-format tokenizer used by the tiny configs
(built by ``projects/tiny_omg_llava/build_tokenizer.py``)."""
import os

TINY_TOKENIZER_DIR = os.path.join(os.path.dirname(__file__), 'tiny_tokenizer')
