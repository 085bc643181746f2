"""Build a CLIP-format BPE tokenizer in which every word of a given vocabulary is exactly one token.

Small models (the test models of `invedit.testing`, the embedded shapes model) need a real `CLIPTokenizer`
(so they load and run through exactly the code path of a real Stable Diffusion checkpoint) but a tiny
vocabulary. CLIP's BPE starts from byte-level characters (the last one of a word carrying ``</w>``) and applies
merges by rank; we write the merges that fuse each vocabulary word into one token, then check with the real
tokenizer and add merges until every word is a single token. Unknown words still tokenize (into characters).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@lru_cache(maxsize=1)
def _byte_alphabet() -> list[str]:
    """CLIP/GPT-2 reversible byte -> printable-unicode table, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _apply_bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one lower-case word: characters, the last with ``</w>``, merged by lowest rank."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        rank, i = min((ranks.get(pair, 1 << 30), i) for i, pair in enumerate(zip(parts, parts[1:])))
        if rank == 1 << 30:
            break
        a, b = parts[i], parts[i + 1]
        merged: list[str] = []
        i = 0
        while i < len(parts):
            if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                merged.append(a + b)
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def word_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Merge list (in rank order) under which every word is a single BPE token."""
    vocab_words = sorted({w.lower() for w in words})
    for w in vocab_words:
        if not re.fullmatch(r"[a-z]+", w):
            raise ValueError(f"word {w!r}: only lower-case ASCII letters are supported")
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for _ in range(64):  # each pass fixes every word that is still split; converges in a few passes
        changed = False
        for w in vocab_words:
            if len(w) == 1:
                continue
            parts = _apply_bpe(w, ranks)
            while len(parts) > 1:  # fuse the remaining pieces left to right
                pair = (parts[0], parts[1])
                if pair not in ranks:
                    ranks[pair] = len(merges)
                    merges.append(pair)
                    changed = True
                parts = [parts[0] + parts[1]] + parts[2:]
        if not changed:
            return merges
    raise RuntimeError("could not build single-token merges for the vocabulary")


def write_word_tokenizer(words: Iterable[str], out_dir: str | Path, model_max_length: int = 77) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs of a CLIP tokenizer to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges = word_merges(words)
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            tokens.append(a + b)
            seen.add(a + b)
    tokens += [BOS, EOS]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special))
    config = dict(special, model_max_length=model_max_length, tokenizer_class="CLIPTokenizer",
                  clean_up_tokenization_spaces=True, errors="replace")
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def build_word_tokenizer(words: Iterable[str], out_dir: str | Path | None = None, model_max_length: int = 77):
    """A `transformers.CLIPTokenizer` in which each of ``words`` is one token.

    Args:
        words: the vocabulary (lower-case ASCII words).
        out_dir: where to write the tokenizer files; a temporary folder when omitted.
        model_max_length: padded prompt length (77 as in Stable Diffusion).
    Returns:
        The loaded `CLIPTokenizer`.
    """
    from transformers import CLIPTokenizer

    words = list(words)
    folder = write_word_tokenizer(words, out_dir or tempfile.mkdtemp(prefix="invedit-tok-"), model_max_length)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    for w in words:
        ids = tokenizer(w).input_ids
        if len(ids) != 3:
            raise RuntimeError(f"tokenizer check failed: {w!r} -> {ids}")
    return tokenizer
