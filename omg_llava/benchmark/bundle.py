"""Write a random-weight bundle in the released files' layout (docs/performance.md,
docs/model_zoo.md).

    DIR/pretrained/omg_llava/
        internlm2-chat-7b/            config.json (internlm2-chat-7b's values), bf16 safetensors
                                      shards with the real key names + model.safetensors.index.json,
                                      tokenizer.model (a sentencepiece BPE model with exactly
                                      ``vocab_size`` pieces, trained here on generated text in
                                      seconds), tokenizer_config.json, special_tokens_map.json
        omg_seg_convl.pth             fp32 ``panoptic_head.*`` under ``state_dict``
        convnext_large_d_320_CocoPanopticOVDataset.pth
                                      a bare fp32 tensor (133, synonyms, clip_dim)
        convnext_large_d_320_laion2b_s29b_b131k_ft_soup/open_clip_pytorch_model.bin
                                      fp32 ``visual.*``
        omg_llava_7b_finetune_8gpus.pth                       the 339 finetune tensors, all fp32
    DIR/omg_llava_bundle.py           the model config naming these files (absolute paths)
    DIR/bundle.json                   preset, seed, sizes

The key names and shapes come from the model itself, built on the meta device from the written
config, so they are the ones the loaders check. With the ``7b`` preset, ``cd DIR`` makes
``configs/omg_llava_7b_finetune_8gpus.py`` find the files where it expects them
(``./pretrained/omg_llava/``).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from .presets import PRESETS, BundlePreset
from .writers import TensorSpec, shard_specs, write_safetensors, write_torch_file

PRETRAINED = 'pretrained/omg_llava'
LLM_DIR = 'internlm2-chat-7b'
OMG_SEG_FILE = 'omg_seg_convl.pth'
CLASS_EMBED_FILE = 'convnext_large_d_320_CocoPanopticOVDataset.pth'
CLIP_FILE = 'convnext_large_d_320_laion2b_s29b_b131k_ft_soup/open_clip_pytorch_model.bin'
FINETUNE_FILE = 'omg_llava_7b_finetune_8gpus.pth'
CONFIG_FILE = 'omg_llava_bundle.py'
CHAT_TOKENS = ('<|plugin|>', '<|interpreter|>', '<|action_end|>', '<|action_start|>', '<|im_end|>',
               '<|im_start|>')
NUM_CLASSES = 133  # COCO panoptic: 80 things + 53 stuff


@dataclass
class BundlePaths:
    """Where a bundle's files are (absolute)."""

    root: str
    config: str
    llm_dir: str
    omg_seg: str
    class_embed: str
    clip: str
    finetune: str

    @classmethod
    def under(cls, root: str | os.PathLike) -> 'BundlePaths':
        root = os.path.abspath(root)
        files = os.path.join(root, PRETRAINED)
        return cls(root, os.path.join(root, CONFIG_FILE), os.path.join(files, LLM_DIR),
                   os.path.join(files, OMG_SEG_FILE), os.path.join(files, CLASS_EMBED_FILE),
                   os.path.join(files, CLIP_FILE), os.path.join(files, FINETUNE_FILE))


def write_bundle(preset: str | BundlePreset, out_dir: str | os.PathLike, seed: int = 0,
                 log: Callable[[str], None] = print) -> BundlePaths:
    """Write every file of a bundle (see the module docstring); returns their paths."""
    preset = PRESETS[preset] if isinstance(preset, str) else preset
    paths = BundlePaths.under(out_dir)
    os.makedirs(paths.llm_dir, exist_ok=True)
    os.makedirs(os.path.dirname(paths.clip), exist_ok=True)
    sizes, start = {}, time.perf_counter()

    def step(name: str, path: str, write: Callable[[], int]) -> None:
        began = time.perf_counter()
        sizes[name] = write()
        log(f'  {name}: {os.path.relpath(path, paths.root)} ({sizes[name] / 1e9:.2f} GB, '
            f'{time.perf_counter() - began:.1f}s)')

    log(f'writing the {preset.name} bundle to {paths.root}')
    step('tokenizer', paths.llm_dir,
         lambda: write_tokenizer(paths.llm_dir, preset.vocab_size, seed))
    step('llm', paths.llm_dir, lambda: write_llm_weights(paths.llm_dir, preset, seed))
    Path(paths.config).write_text(bundle_config(preset, paths))

    from omg_llava.models.weights import head_checkpoint_keys
    from omg_llava.verification.model_keys import build_model_on_meta, part_key_shapes
    encoder = build_model_on_meta(paths.config, 'visual_encoder')
    encoder_state = encoder.state_dict()
    head = [TensorSpec(k, tuple(encoder_state[k].shape), torch.float32)
            for k in head_checkpoint_keys(encoder)]
    step('omg_seg', paths.omg_seg,
         lambda: write_torch_file(paths.omg_seg, head, seed, wrap_key='state_dict'))
    step('class_embed', paths.class_embed,
         lambda: write_class_embeddings(paths.class_embed, preset, seed))
    clip = [TensorSpec(open_clip_name(k[len('backbone.'):]), tuple(v.shape), torch.float32)
            for k, v in encoder_state.items() if k.startswith('backbone.')]
    step('clip', paths.clip, lambda: write_torch_file(paths.clip, clip, seed))
    finetune = [TensorSpec(k, shape, torch.float32)
                for k, shape in part_key_shapes(paths.config, 'finetune').items()]
    step('finetune', paths.finetune, lambda: write_torch_file(paths.finetune, finetune, seed))
    info = dict(preset=asdict(preset), seed=seed, bytes=sizes,
                seconds=round(time.perf_counter() - start, 1))
    Path(paths.root, 'bundle.json').write_text(json.dumps(info, indent=2) + '\n')
    log(f'done in {info["seconds"]}s; chat with:  python tools/chat.py {paths.config} --pth '
        f'{paths.finetune}')
    return paths


def open_clip_name(backbone_key: str) -> str:
    """A backbone key (``stem.0.weight``, ``layer3.5.…``) under its open_clip name
    (``visual.trunk.…``)."""
    from omg_llava.models.backbones.convnext_clip import OPEN_CLIP_PREFIXES
    for clip_prefix, own_prefix in OPEN_CLIP_PREFIXES:
        if backbone_key.startswith(own_prefix):
            return clip_prefix + backbone_key[len(own_prefix):]
    raise KeyError(f'backbone key {backbone_key!r} has no open_clip name')


# ----------------------------------------------------------------------------------- the LLM folder
def tokenizer_corpus(vocab_size: int, seed: int) -> list[str]:
    """Generated text rich enough for ``vocab_size`` BPE pieces: chat prompts and random
    pseudo-words."""
    rng = random.Random(seed)
    words = ('please segment the a an in this image what is region picture describe detail cat dog '
             'person car shape red blue green large small left right of and with on it there are '
             'some marks can you').split()
    letters = 'abcdefghijklmnopqrstuvwxyz'
    lexicon = words + [''.join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
                       for _ in range(max(2000, int(vocab_size * 1.5)))]
    lines = [' '.join(rng.choice(lexicon) for _ in range(12)) + rng.choice('.?!,') for _ in range(
        max(2000, vocab_size * 2 // 3))]
    return lines + [f'{t} Please segment the cat in this image.' for t in CHAT_TOKENS]


def write_tokenizer(llm_dir: str, vocab_size: int, seed: int) -> int:
    """Train the sentencepiece model (``vocab_size`` pieces, InternLM2's special pieces) and write
    the tokenizer files of the released folder. Returns the model file's size."""
    import sentencepiece as spm
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, 'tokenizer')
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(tokenizer_corpus(vocab_size, seed)), model_prefix=prefix,
            vocab_size=vocab_size, model_type='bpe', character_coverage=1.0, byte_fallback=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, user_defined_symbols=list(CHAT_TOKENS),
            normalization_rule_name='identity', num_threads=2, minloglevel=2)
        shutil.copy(prefix + '.model', os.path.join(llm_dir, 'tokenizer.model'))
    ids = {token: spm.SentencePieceProcessor(
               model_file=os.path.join(llm_dir, 'tokenizer.model')).piece_to_id(token)
           for token in CHAT_TOKENS}
    special = dict(lstrip=False, normalized=False, rstrip=False, single_word=False)
    decoder = {str(i): dict(content=t, special=True, **special)
               for i, t in sorted([(0, '<unk>'), (1, '<s>'), (2, '</s>')]
                                  + [(v, k) for k, v in ids.items()])}
    config = dict(auto_map={'AutoTokenizer': ['tokenization_internlm2.InternLM2Tokenizer',
                                              'tokenization_internlm2_fast.InternLM2TokenizerFast']},
                  tokenizer_class='InternLM2Tokenizer', bos_token='<s>', eos_token='</s>',
                  pad_token='</s>', unk_token='<unk>', add_bos_token=True, add_eos_token=False,
                  decode_with_prefix_space=False, clean_up_tokenization_spaces=False,
                  model_max_length=1000000000000000019884624838656, added_tokens_decoder=decoder,
                  additional_special_tokens=['<|im_start|>', '<|im_end|>', '<|action_start|>',
                                             '<|action_end|>', '<|interpreter|>', '<|plugin|>'])
    Path(llm_dir, 'tokenizer_config.json').write_text(json.dumps(config, indent=2) + '\n')
    token = lambda t: dict(content=t, **special)  # noqa: E731
    Path(llm_dir, 'special_tokens_map.json').write_text(json.dumps(dict(
        additional_special_tokens=config['additional_special_tokens'], bos_token=token('<s>'),
        eos_token=token('</s>'), pad_token=token('</s>'), unk_token=token('<unk>')), indent=2)
        + '\n')
    return os.path.getsize(os.path.join(llm_dir, 'tokenizer.model'))


def llm_specs(preset: BundlePreset) -> list[TensorSpec]:
    """The base LLM's tensors (bf16), in the model's own order, from a meta-device build of the
    config."""
    from transformers import AutoModelForCausalLM

    from omg_llava.models.llm import InternLM2Config
    config = InternLM2Config(**{k: v for k, v in preset.llm_config.items()
                                if k not in ('auto_map', 'architectures')})
    with torch.device('meta'):
        llm = AutoModelForCausalLM.from_config(config)
    return [TensorSpec(k, tuple(v.shape), torch.bfloat16) for k, v in llm.state_dict().items()]


def write_llm_weights(llm_dir: str, preset: BundlePreset, seed: int) -> int:
    """config.json, the bf16 shards ``model-0000i-of-0000n.safetensors`` and their index."""
    Path(llm_dir, 'config.json').write_text(json.dumps(preset.llm_config, indent=2) + '\n')
    shards = shard_specs(llm_specs(preset), preset.shard_bytes)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, start=1):
        name = f'model-{i:05d}-of-{len(shards):05d}.safetensors'
        total += write_safetensors(os.path.join(llm_dir, name), shard, seed)
        weight_map.update({spec.key: name for spec in shard})
    Path(llm_dir, 'model.safetensors.index.json').write_text(json.dumps(
        dict(metadata=dict(total_size=total), weight_map=weight_map), indent=2) + '\n')
    return total


# ------------------------------------------------------------------------------------ encoder files
def write_class_embeddings(path: str, preset: BundlePreset, seed: int) -> int:
    from omg_llava.models.omg_seg_trainer import random_class_embeddings
    embeddings = random_class_embeddings(NUM_CLASSES, preset.head['num_synonyms'],
                                         preset.backbone['clip_embed_dim'], seed)
    torch.save(embeddings, path)
    return embeddings.numel() * 4


def bundle_config(preset: BundlePreset, paths: BundlePaths) -> str:
    """The model config of the bundle: the structure of configs/omg_llava_7b_finetune_8gpus.py's
    model."""
    head = dict(preset.head)
    return CONFIG_TEMPLATE.format(
        preset=preset.name, pretrained_dir=os.path.join(paths.root, PRETRAINED) + os.sep,
        llm_dir=LLM_DIR, omg_seg=OMG_SEG_FILE, clip=CLIP_FILE, class_embed=CLASS_EMBED_FILE,
        image_size=preset.image_size,
        num_queries=head.pop('num_queries'), feat_channels=head.pop('feat_channels'),
        depths=tuple(preset.backbone['depths']), dims=tuple(preset.backbone['dims']),
        clip_embed_dim=preset.backbone['clip_embed_dim'],
        head=',\n        '.join(f'{k}={v!r}' for k, v in head.items()),
        lora_r=preset.lora_r, lora_alpha=preset.lora_alpha)


CONFIG_TEMPLATE = '''\
# OMG-LLaVA finetune-stage model on the random-weight bundle of this folder ({preset} preset),
# written by `tools/benchmark.py write-bundle`: the model part of
# configs/omg_llava_7b_finetune_8gpus.py, with the files here.
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM
from transformers import AutoTokenizer

from omg_llava.models import ConvNeXtCLIPBackbone
from omg_llava.models import OMGLLaVA
from omg_llava.models import OMGSegHead
from omg_llava.models import OMGSegVisualEncoder

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
pretrained_dir = {pretrained_dir!r}
llm_name_or_path = pretrained_dir + {llm_dir!r}
omg_head_pretrain_pth_path = pretrained_dir + {omg_seg!r}
omg_ov_class_embed_path = pretrained_dir + {class_embed!r}
clip_pretrain_path = pretrained_dir + {clip!r}
image_size = {image_size}
pixel_shuffle_ratio = 2
num_queries = {num_queries}
omg_head_channels = {feat_channels}

#######################################################################
#            PART 2  Model & Tokenizer & Image Processor              #
#######################################################################
tokenizer = dict(type=AutoTokenizer.from_pretrained,
                 pretrained_model_name_or_path=llm_name_or_path, padding_side='right')

visual_encoder = dict(
    type=OMGSegVisualEncoder,
    backbone=dict(type=ConvNeXtCLIPBackbone, depths={depths!r}, dims={dims!r},
                  clip_embed_dim={clip_embed_dim}),
    panoptic_head=dict(
        type=OMGSegHead,
        in_channels={dims!r},
        strides=(4, 8, 16, 32),
        feat_channels=omg_head_channels,
        num_queries=num_queries,
        num_things_classes=80,
        num_stuff_classes=53,
        clip_embed_dim={clip_embed_dim},
        {head}),
    pixel_shuffle_ratio=pixel_shuffle_ratio,
    object_prior_smooth=0.5,
    frozen=True,
    weights=dict(omg_seg=omg_head_pretrain_pth_path, clip=clip_pretrain_path,
                 class_embed=omg_ov_class_embed_path))

model = dict(
    type=OMGLLaVA,
    stage='finetune',
    freeze_llm=True,
    tokenizer=tokenizer,
    llm=dict(type=AutoModelForCausalLM.from_pretrained,
             pretrained_model_name_or_path=llm_name_or_path, torch_dtype=torch.bfloat16),
    llm_lora=dict(type=LoraConfig, r={lora_r}, lora_alpha={lora_alpha}, lora_dropout=0.05,
                  bias='none', task_type='CAUSAL_LM'),
    visual_encoder=visual_encoder)
'''
