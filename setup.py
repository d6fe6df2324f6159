"""Packaging for the omg_llava plugin.

Runtime dependencies are ranges; the tested pins live in requirements/constraints.txt and the
set-up path (scripts/setup_env.sh) installs mmcv with compiled ops, xtuner with --no-deps and
deepspeed without prebuilt ops, which a plain dependency list cannot express.
xtuner is deliberately not listed: its metadata drags in 100+ packages (see docs/installation.md).
"""
from setuptools import find_packages, setup

setup(
    name='omg_llava',
    version='0.1.0',
    description='OMG-LLaVA as an mmengine/xtuner plugin: chat with pixel-accurate masks and visual prompts',
    python_requires='>=3.10',
    packages=find_packages(include=['omg_llava', 'omg_llava.*']),
    package_data={'omg_llava': ['assets/tiny_tokenizer/*', 'assets/tiny_synthetic/*', 'assets/tiny_synthetic/llm/*',
                                'assets/*.jpg', 'segmentation/vocabularies/*.txt']},
    install_requires=[
        'torch>=2.1',
        'mmengine>=0.10.3,<0.11',
        'mmcv>=2.0.0,<2.2.0',
        'mmdet>=3.3.0,<3.4',
        'transformers>=4.46,<4.54',
        'peft>=0.13',
        'accelerate',
        'datasets',
        'einops',
        'sentencepiece',
        'scipy',
        'kornia>=0.7',
        'pycocotools',
        'safetensors',
        'numpy',
        'pillow',
    ],
    extras_require={
        'train': ['deepspeed>=0.12.3,<0.19.7'],
        'gpu': ['bitsandbytes'],
        'test': ['pytest', 'scikit-image', 'imgviz'],
        'app': ['gradio'],
        'eval': ['pycocoevalcap'],  # METEOR / SPICE also need Java
    },
)
