"""A thin wrapper over the HF fast tokenizer of a model directory, loaded offline."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from radixmesh.shared.model_location import resolve_model_path

logger = logging.getLogger(__name__)

# Files of a model directory that may name the ids ending generation, besides the tokenizer.
_EOS_CONFIG_FILES = ("generation_config.json", "config.json")


class TextTokenizer:
    """Text ⇄ token ids for one model, as the tokenizer and detokenizer services need them.

    Plain prompts are encoded with the tokenizer's own default special tokens (a BOS where the
    model's tokenizer adds one), as `transformers` and SGLang do. Chat prompts are rendered by
    the model's chat template, which writes its special tokens itself, and then encoded
    without adding any. Decoding never applies `clean_up_tokenization_spaces`, so text decoded
    piece by piece always equals text decoded at once.
    """

    def __init__(self, hf_tokenizer: PreTrainedTokenizerBase,
                 extra_eos_token_ids: Iterable[int] = ()) -> None:
        self.hf_tokenizer = hf_tokenizer
        # The Rust tokenizer decodes exactly as `hf_tokenizer.decode` does without cleanup, at a
        # sixth of the cost (the detokenizer decodes twice per request per step: issue 16).
        plain = (isinstance(hf_tokenizer, PreTrainedTokenizerFast)
                 and type(hf_tokenizer).decode is PreTrainedTokenizerBase.decode
                 and type(hf_tokenizer)._decode is PreTrainedTokenizerFast._decode)
        self._rust = hf_tokenizer.backend_tokenizer if plain else None
        ids = [hf_tokenizer.eos_token_id, *extra_eos_token_ids]
        self._eos_token_ids = tuple(dict.fromkeys(i for i in ids if i is not None))

    @classmethod
    def from_pretrained(cls, model_path: str | Path) -> TextTokenizer:
        """Loads from a local model directory; never reaches a model hub."""
        hf_tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
        return cls(hf_tokenizer, _eos_ids_from_configs(Path(model_path)))

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (HF's `vocab_size` leaves those out)."""
        return len(self.hf_tokenizer)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The tokenizer's EOS first, then those named by generation_config.json/config.json."""
        return self._eos_token_ids

    def encode(self, text: str) -> list[int]:
        return list(self.hf_tokenizer.encode(text))

    def render_chat(self, messages: Sequence[dict]) -> str:
        """The prompt text of a conversation, ending with the assistant's turn opener."""
        return self.hf_tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True)

    def apply_chat_template(self, messages: Sequence[dict]) -> list[int]:
        """Token ids of a conversation, with the generation prompt."""
        text = self.render_chat(messages)
        return list(self.hf_tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if self._rust is not None:
            return self._rust.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
        return self.hf_tokenizer.decode(
            list(token_ids), skip_special_tokens=skip_special_tokens,
            clean_up_tokenization_spaces=False)

    def decode_batch(self, sequences: Sequence[Sequence[int]],
                     skip_special_tokens: bool = True) -> list[str]:
        """`decode` of each sequence, in one call where the Rust tokenizer decodes."""
        if self._rust is None:
            return [self.decode(ids, skip_special_tokens) for ids in sequences]
        return self._rust.decode_batch(list(sequences), skip_special_tokens=skip_special_tokens)


def load_tokenizer(model_path: str | Path | None, revision: str | None = None,
                   token: str | None = None) -> TextTokenizer | None:
    """The tokenizer of a model directory or hub id (default: the default model's), or None
    when the directory has none: then only `input_ids` prompts work and text stays empty."""
    path = resolve_model_path(model_path, revision, token)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        logger.warning("%s has no tokenizer: only input_ids prompts work, text stays empty", path)
        return None
    return TextTokenizer.from_pretrained(path)


def _eos_ids_from_configs(model_path: Path) -> list[int]:
    ids: list[int] = []
    for name in _EOS_CONFIG_FILES:
        path = model_path / name
        if not path.is_file():
            continue
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, list):
            ids.extend(v for v in value if isinstance(v, int))
    return ids
