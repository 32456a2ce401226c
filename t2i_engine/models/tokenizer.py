"""CLIP and T5 stand-in tokenizers built from a word list, with no download.

CLIP's tokenizer is byte-level BPE: every byte has a symbol, and a word's last symbol carries
"</w>". We give it the 2 x 256 byte symbols (so any text tokenizes) plus merge rules that build
each listed word into a single token, left to right. Every merge's product is in the vocabulary,
so whatever order the merges fire in, the tokens are valid ids.

T5's tokenizer is a SentencePiece unigram model. Ours keeps its special ids (pad 0, eos 1, unk 2)
and its word-start marker, with the listed words as whole pieces and printable ASCII characters
as single ones, so other words spell out rather than collapse to unk.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2, as in every T5 vocabulary
WORD_START = "\u2581"  # SentencePiece's "▁", which marks a piece that begins a word


def _byte_symbols() -> list[str]:
    # CLIP's (and GPT-2's) reversible byte -> printable unicode map.
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_clip_tokenizer_files(words: list[str], out_dir: Path) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt for `words` (lowercase ASCII words) into `out_dir`."""
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": i + len(symbols) for i, s in enumerate(symbols)})
    merges: list[str] = []
    for word in dict.fromkeys(w.lower() for w in words if len(w) > 1):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        current = parts[0]
        for part in parts[1:]:
            rule = f"{current} {part}"
            current += part
            if current not in vocab:
                vocab[current] = len(vocab)
                merges.append(rule)
    vocab[BOS], vocab[EOS] = len(vocab), len(vocab) + 1
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def build_clip_tokenizer(words: list[str], max_length: int = 77):
    """A transformers CLIPTokenizer over `words`, padded with the end token like SD1.5's."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = write_clip_tokenizer_files(words, Path(tmp))
        tok = CLIPTokenizer(str(vocab_file), str(merges_file), pad_token=EOS)
    tok.model_max_length = max_length
    return tok


def t5_pieces(words: list[str]) -> list[tuple[str, float]]:
    """Unigram (piece, log-probability) pairs: T5's specials first, so their ids are T5's. A
    listed word scores above its letters, so it tokenizes as one piece."""
    specials = [(T5_PAD, 0.0), (T5_EOS, 0.0), (T5_UNK, 0.0)]
    whole = [(WORD_START + w, -1.0) for w in dict.fromkeys(w.lower() for w in words)]
    letters = [(chr(c), -10.0) for c in range(ord("!"), ord("~") + 1)]
    return specials + [(WORD_START, -5.0)] + whole + letters


def build_t5_tokenizer(words: list[str], max_length: int = 512):
    """A transformers fast tokenizer shaped like T5's: "</s>" closes every sequence, "<pad>"
    pads it on the right, out-of-vocabulary characters become "<unk>"."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(Unigram(t5_pieces(words), unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {T5_EOS}", pair=f"$A {T5_EOS} $B {T5_EOS}", special_tokens=[(T5_EOS, 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=T5_PAD,
        eos_token=T5_EOS,
        unk_token=T5_UNK,
        model_max_length=max_length,
    )
