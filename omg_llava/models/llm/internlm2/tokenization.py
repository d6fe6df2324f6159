"""First-party slow tokenizer for InternLM2 over a sentencepiece ``tokenizer.model``.

Ids are the sentencepiece piece ids (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2; the chat model's
``<|im_start|>`` / ``<|im_end|>`` are user-defined pieces 92543 / 92542). Added tokens (OMG-LLaVA's
``[SEG]``, ``<p>``, ``</p>``, ``<region>``, ``<mark>``) get consecutive ids after the sentencepiece
vocabulary and are split out of the text by transformers' added-token trie before sentencepiece sees
the rest.

Decoding gives the same text on transformers 4.x and 5.x (5.x dropped the slow tokenizers' spacing
of added tokens): added tokens are set apart by single spaces unless
``spaces_between_special_tokens=False``, so an answer reads ``<p> The cat </p> [SEG] .`` as the
released model's tokenizer wrote it.
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import sentencepiece as spm
from transformers import AddedToken, PreTrainedTokenizer

VOCAB_FILES_NAMES = {'vocab_file': 'tokenizer.model'}


class InternLM2Tokenizer(PreTrainedTokenizer):
    """Sentencepiece tokenizer with a BOS (``<s>``) prepended when ``add_special_tokens`` is true.

    Args:
        vocab_file: path of the sentencepiece model (``tokenizer.model``).
        unk_token / bos_token / eos_token / pad_token: special tokens (pieces of the model).
        sp_model_kwargs: forwarded to ``sentencepiece.SentencePieceProcessor``.
        add_bos_token / add_eos_token: wrap encoded sequences with ``<s>`` … ``</s>``.
        clean_up_tokenization_spaces: transformers' post-decode clean-up (off: it alters text like
            ``" ."``).
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ['input_ids', 'attention_mask']

    def __init__(self, vocab_file: str, unk_token: str = '<unk>', bos_token: str = '<s>',
                 eos_token: str = '</s>',
                 pad_token: str | None = '</s>', sp_model_kwargs: dict[str, Any] | None = None,
                 add_bos_token: bool = True, add_eos_token: bool = False,
                 clean_up_tokenization_spaces: bool = False, **kwargs: Any) -> None:
        self.vocab_file = vocab_file
        self.sp_model_kwargs = sp_model_kwargs or {}
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.Load(vocab_file)  # before super().__init__, which already looks tokens up
        special = {name: AddedToken(tok, normalized=False, special=True) if isinstance(tok, str)
                   else tok
                   for name, tok in (('unk_token', unk_token), ('bos_token', bos_token),
                                     ('eos_token', eos_token), ('pad_token', pad_token))
                   if tok is not None}
        super().__init__(add_bos_token=add_bos_token, add_eos_token=add_eos_token,
                         sp_model_kwargs=self.sp_model_kwargs,
                         clean_up_tokenization_spaces=clean_up_tokenization_spaces, **special,
                         **kwargs)

    # -- pickling: the sentencepiece processor is rebuilt from its serialized proto
    # -------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state['sp_model'] = None
        state['sp_model_proto'] = self.sp_model.serialized_model_proto()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        proto = state.pop('sp_model_proto')
        self.__dict__.update(state)
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.LoadFromSerializedProto(proto)

    # -- vocabulary
    # ----------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of sentencepiece pieces (added tokens excluded)."""
        return self.sp_model.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        return self.sp_model.id_to_piece(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Sentencepiece-decode runs of ordinary pieces; special tokens are inserted verbatim."""
        specials, text, run = set(self.all_special_tokens), '', []
        for token in tokens:
            if token in specials:
                text += self.sp_model.decode(run) + token
                run = []
            else:
                run.append(token)
        return text + self.sp_model.decode(run)

    def _set_apart_tokens(self) -> set[str]:
        """Added tokens beyond the sentencepiece vocabulary, other than the named special tokens."""
        named = {str(t) for t in (self.bos_token, self.eos_token, self.unk_token, self.pad_token)
                 if t is not None}
        return {t for t, i in self.added_tokens_encoder.items() if i >= self.vocab_size} - named

    def _decode(self, token_ids: int | list[int], skip_special_tokens: bool = False,
                clean_up_tokenization_spaces: bool | None = None,
                spaces_between_special_tokens: bool = True, **kwargs: Any) -> str:
        """Ids → text: runs of pieces are sentencepiece-decoded; added tokens (``[SEG]``, ``<p>``,
        …) stand apart, joined to their neighbours by one space when
        ``spaces_between_special_tokens`` (the default)."""
        tokens = self.convert_ids_to_tokens(token_ids, skip_special_tokens=skip_special_tokens)
        tokens = [tokens] if isinstance(tokens, str) else tokens
        apart, pieces, run = self._set_apart_tokens(), [], []
        for token in tokens:
            if token in apart:
                if run:
                    pieces.append(self.convert_tokens_to_string(run))
                    run = []
                pieces.append(token)
            else:
                run.append(token)
        if run:
            pieces.append(self.convert_tokens_to_string(run))
        text = (' ' if spaces_between_special_tokens else '').join(pieces)
        clean_up = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None \
            else clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean_up else text

    # -- special tokens
    # ------------------------------------------------------------------------------------
    def _wrap(self, ids: list[int]) -> list[int]:
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        return bos + ids + eos

    def build_inputs_with_special_tokens(self, token_ids_0: list[int],
                                         token_ids_1: list[int] | None = None) -> list[int]:
        """``[<s>] A [</s>]`` or ``[<s>] A [</s>] [<s>] B [</s>]`` per ``add_bos_token`` /
        ``add_eos_token``."""
        ids = self._wrap(token_ids_0)
        return ids if token_ids_1 is None else ids + self._wrap(token_ids_1)

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 for the BOS/EOS that :meth:`build_inputs_with_special_tokens` adds, 0 for sequence
        tokens."""
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1,
                                                   already_has_special_tokens=True)
        mask = [1] * self.add_bos_token + [0] * len(token_ids_0) + [1] * self.add_eos_token
        if token_ids_1 is not None:
            mask += [1] * self.add_bos_token + [0] * len(token_ids_1) + [1] * self.add_eos_token
        return mask

    def save_vocabulary(self, save_directory: str,
                        filename_prefix: str | None = None) -> tuple[str]:
        """Write ``[prefix-]tokenizer.model`` into ``save_directory`` (copied, or re-serialized if
        gone)."""
        if not os.path.isdir(save_directory):
            raise ValueError(f'save_directory {save_directory!r} is not a directory')
        name = (filename_prefix + '-' if filename_prefix else '') + VOCAB_FILES_NAMES['vocab_file']
        out_file = os.path.join(save_directory, name)
        if os.path.isfile(self.vocab_file):
            if os.path.abspath(self.vocab_file) != os.path.abspath(out_file):
                shutil.copyfile(self.vocab_file, out_file)
        else:
            with open(out_file, 'wb') as f:
                f.write(self.sp_model.serialized_model_proto())
        return (out_file,)
