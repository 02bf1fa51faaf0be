"""Trains the toy byte-level BPE tokenizer that `radixmesh make-model` ships with each model.

The output directory loads offline with `transformers.AutoTokenizer.from_pretrained`:
`tokenizer.json` (the trained `tokenizers` pipeline) and `tokenizer_config.json` (special
tokens, `model_max_length` and a ChatML chat template).

Invariants:
- the vocabulary has exactly `vocab_size` entries: the trainer learns as many merges as the
  corpus allows and filler entries take the ids above those, so the model's embedding table
  and the tokenizer always agree on the id range;
- the same `vocab_size` always gives byte-identical files (the corpus is embedded and the BPE
  trainer breaks ties deterministically);
- plain-text encoding adds `<s>` (Llama style); the chat template writes `<s>` itself, so it
  is tokenized without special tokens, as `apply_chat_template` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from radixmesh.make_model.corpus import CORPUS

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, IM_START, IM_END)
BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)
DEFAULT_MODEL_MAX_LENGTH = 4096

# ChatML, as Qwen writes it, behind a Llama-style BOS. Roles are free-form strings.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True, slots=True)
class TokenizerInfo:
    """What the model files need to know about the trained tokenizer."""

    vocab_size: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    eos_token_ids: tuple[int, ...]  # ids that end generation: `</s>` then `<|im_end|>`


def train_tokenizer(out_dir: Path, vocab_size: int = 512, *,
                    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> TokenizerInfo:
    """Trains the tokenizer on the embedded corpus and saves it into `out_dir` (created)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE} (256 bytes + "
                         f"{len(SPECIAL_TOKENS)} special tokens), got {vocab_size}")
    tokenizer = _train_bpe(vocab_size)
    tokenizer = _pad_with_filler_tokens(tokenizer, vocab_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    _write_config(out_dir / "tokenizer_config.json", model_max_length)
    return _info(tokenizer)


def _train_bpe(vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    return tokenizer


def _pad_with_filler_tokens(tokenizer: Tokenizer, vocab_size: int) -> Tokenizer:
    """Fills the ids the corpus could not earn with plain vocabulary entries.

    No merge produces them, so encoding never does; decoding one yields its literal name, so a
    model that samples it (random weights do) still streams visible text. Entries of the BPE
    model, unlike added tokens, keep loading fast at Llama-3 vocabulary sizes.
    """
    missing = vocab_size - tokenizer.get_vocab_size(with_added_tokens=True)
    if missing <= 0:
        return tokenizer
    state = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    first_id = tokenizer.get_vocab_size(with_added_tokens=True)
    for i in range(missing):
        vocab[f"<|filler_{i}|>"] = first_id + i
    return Tokenizer.from_str(json.dumps(state))


def _write_config(path: Path, model_max_length: int) -> None:
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": [IM_START, IM_END],
        "model_max_length": model_max_length,
        "add_bos_token": True,
        "add_eos_token": False,
        # Cleanup rewrites " ." as "." depending on neighbours, which would make streamed
        # text differ from the text decoded at once.
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _info(tokenizer: Tokenizer) -> TokenizerInfo:
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    return TokenizerInfo(
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        eos_token_ids=(ids[EOS], ids[IM_END]),
    )
