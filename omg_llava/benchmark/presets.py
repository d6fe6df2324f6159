"""Sizes of the random-weight bundles: ``7b`` is the released model, ``small`` and ``tiny`` keep its
layout (file names, key names, dtypes) with smaller dimensions so tests run the same code path in
seconds."""
from __future__ import annotations

from dataclasses import dataclass, field

#: ``config.json`` of internlm2-chat-7b (the values of the released folder; spec §5.1).
INTERNLM2_CHAT_7B_CONFIG = dict(
    architectures=['InternLM2ForCausalLM'],
    attn_implementation='eager',
    auto_map={'AutoConfig': 'configuration_internlm2.InternLM2Config',
              'AutoModel': 'modeling_internlm2.InternLM2ForCausalLM',
              'AutoModelForCausalLM': 'modeling_internlm2.InternLM2ForCausalLM'},
    bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=2, hidden_act='silu', hidden_size=4096,
    initializer_range=0.02, intermediate_size=14336, max_position_embeddings=32768,
    model_type='internlm2', num_attention_heads=32, num_hidden_layers=32, num_key_value_heads=8,
    rms_norm_eps=1e-05,
    rope_scaling={'type': 'dynamic', 'factor': 2.0}, rope_theta=1000000, tie_word_embeddings=False,
    torch_dtype='bfloat16', transformers_version='4.37.1', use_cache=True, vocab_size=92544)


@dataclass(frozen=True)
class BundlePreset:
    """One bundle size.

    Attributes:
        name: the preset name.
        llm: ``config.json`` overrides of :data:`INTERNLM2_CHAT_7B_CONFIG` (``vocab_size`` =
            tokenizer pieces).
        lora_r / lora_alpha: the finetune's LoRA.
        image_size: network input side.
        backbone: ``ConvNeXtCLIPBackbone`` arguments. head: ``OMGSegHead`` arguments besides the
            channels.
        shard_bytes: largest LLM safetensors shard.
    """

    name: str
    llm: dict = field(default_factory=dict)
    lora_r: int = 512
    lora_alpha: int = 256
    image_size: int = 1024
    backbone: dict = field(default_factory=lambda: dict(depths=(3, 3, 27, 3),
                                                        dims=(192, 384, 768, 1536),
                                                        clip_embed_dim=768))
    head: dict = field(default_factory=lambda: dict(
        feat_channels=256, num_queries=300, num_synonyms=17, num_heads=8, pixel_decoder_layers=6,
        pixel_decoder_ffn_channels=1024, decoder_layers=9, decoder_ffn_channels=2048,
        num_feature_levels=3, logit_scale=4.6052))
    shard_bytes: int = 2_000_000_000

    @property
    def llm_config(self) -> dict:
        return {**INTERNLM2_CHAT_7B_CONFIG, **self.llm}

    @property
    def vocab_size(self) -> int:
        return self.llm_config['vocab_size']


PRESETS = {
    '7b': BundlePreset('7b'),
    'small': BundlePreset('small',
                          llm=dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
                                   num_attention_heads=8, num_key_value_heads=2),
                          lora_r=128, lora_alpha=64, shard_bytes=400_000_000),
    'tiny': BundlePreset(
        'tiny', llm=dict(hidden_size=64, intermediate_size=224, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, vocab_size=1000),
        lora_r=8, lora_alpha=4, image_size=256,
        backbone=dict(depths=(1, 1, 2, 1), dims=(32, 64, 128, 256), clip_embed_dim=32),
        head=dict(feat_channels=64, num_queries=20, num_synonyms=2, num_heads=4,
                  pixel_decoder_layers=1, pixel_decoder_ffn_channels=128, decoder_layers=3,
                  decoder_ffn_channels=128, num_feature_levels=3, logit_scale=4.6052),
        shard_bytes=200_000),
}
