"""Packaging for the omg_llava plugin.

Runtime dependencies are ranges covering the two tested stacks: requirements/constraints.txt
(newest, the
default: transformers 5.x) and requirements/constraints-oldest.txt (oldest supported: transformers
    4.48). The
set-up path (scripts/setup_env.sh [VENV] [newest|oldest]) installs mmcv with compiled ops, xtuner
with --no-deps and deepspeed without prebuilt ops, which a plain dependency list cannot express.
xtuner is deliberately not listed: it is needed for training only, and its metadata drags in 100+
packages (see docs/installation.md).

A build copies the repository's configs/ and tools/ into the package as
omg_llava/.mim/{configs,tools} (the layout mmdet and mim use), so that an installed package finds
its configs by name from any directory (omg_llava.config_paths) and the console scripts run the
tools (omg_llava.cli); an editable install uses the checkout's folders directly.
"""
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

MIM_FOLDERS = ('configs', 'tools')  # copied into omg_llava/.mim/ by a (non-editable) build


class BuildWithMim(build_py):
    """``build_py`` that also copies :data:`MIM_FOLDERS` (their ``.py`` files) into
    ``omg_llava/.mim/``."""

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            return  # the checkout's configs/ and tools/ are found next to the package
        here = os.path.dirname(os.path.abspath(__file__))
        for folder in MIM_FOLDERS:
            target = os.path.join(self.build_lib, 'omg_llava', '.mim', folder)
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(os.path.join(here, folder), target,
                            ignore=lambda _, names: [n
                                                     for n in names if n == '__pycache__'
                                                     or n.endswith('.pyc')])

setup(
    name='omg_llava',
    version='0.1.0',
    description='OMG-LLaVA as an mmengine/xtuner plugin: chat with pixel-accurate masks and visual '
                'prompts',
    python_requires='>=3.10',
    packages=find_packages(include=['omg_llava', 'omg_llava.*']),
    package_data={'omg_llava': ['assets/tiny_tokenizer/*', 'assets/tiny_synthetic/*',
                                'assets/tiny_synthetic/llm/*',
                                'assets/*.jpg', 'segmentation/vocabularies/*.txt']},
    cmdclass={'build_py': BuildWithMim},
    entry_points={'console_scripts': [
        f'omg-llava-{command} = omg_llava.cli:{command.replace("-", "_")}'
        for command in ('chat', 'app', 'test', 'segment', 'segment-video', 'convert', 'export-hf',
                        'benchmark',
                        'model-keys', 'class-embeddings')]},
    install_requires=[
        'torch>=2.1',
        'mmengine>=0.10.3,<0.11',
        'mmcv>=2.0.0,<2.2.0',
        'mmdet>=3.3.0,<3.4',
        # tested: 4.48.0 (oldest) and 5.25.0 (newest); 4.57.6 for the LLM tests
        'transformers>=4.48,<6',
        # transformers 4.x needs <1.0, 5.25 needs >=2.4; each pins its own range
        'huggingface_hub>=0.24,<3',
        'tokenizers>=0.21',
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
        'test': ['pytest', 'scikit-image', 'imgviz', 'ruff'],  # ruff: `make lint` (pinned in constraints)
        # 6.17.3 with huggingface_hub<1.0 (transformers 4.x), 6.31.0 with 5.x
        'app': ['gradio>=6.17,<7'],
        'eval': ['pycocoevalcap'],  # METEOR / SPICE also need Java
    },
)
