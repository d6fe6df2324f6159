"""Small files shipped with the package: the tiny InternLM2-format tokenizer used by the tiny
configs (built by ``projects/tiny_omg_llava/build_tokenizer.py``) and the trained tiny synthetic
model (``tiny_synthetic/``, trained by ``projects/tiny_omg_llava/train_tiny.py``): the built-in
default of ``tools/chat.py``, ``tools/app.py`` and ``make demo``."""
import os

ASSET_DIR = os.path.dirname(__file__)
TINY_TOKENIZER_DIR = os.path.join(ASSET_DIR, 'tiny_tokenizer')
TINY_SYNTHETIC_DIR = os.path.join(ASSET_DIR, 'tiny_synthetic')
#: the released-format OMG-LLaVA checkpoint of the trained tiny synthetic model
TINY_SYNTHETIC_PTH = os.path.join(TINY_SYNTHETIC_DIR, 'omg_llava_tiny_synthetic.pth')
#: the language stage's LLM (Hugging Face folder), what the tiny synthetic configs build the LLM
#: from
TINY_SYNTHETIC_LLM_DIR = os.path.join(TINY_SYNTHETIC_DIR, 'llm')
#: its encoder files, as ``visual_encoder.weights`` names them
TINY_SYNTHETIC_ENCODER = dict(omg_seg=os.path.join(TINY_SYNTHETIC_DIR, 'omg_seg.pth'),
                              clip=os.path.join(TINY_SYNTHETIC_DIR, 'clip_trunk.safetensors'),
                              class_embed=os.path.join(TINY_SYNTHETIC_DIR, 'class_embed.pth'))
#: a held-out synthetic image (val split) for the demo
TINY_SYNTHETIC_DEMO_IMAGE = os.path.join(TINY_SYNTHETIC_DIR, 'demo_shapes.jpg')
