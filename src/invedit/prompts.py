"""Prompt handling: text embeddings, token lengths, and where a word's tokens sit in a prompt."""

from __future__ import annotations

import re
import weakref

import torch

from .backbones import backbone
from .errors import InveditError


def check_prompt(prompt: str, tokenizer, what: str = "prompt", allow_empty: bool = False) -> str:
    """Strip ``prompt`` and check it is non-empty (unless ``allow_empty``), fits the text encoder and (on a
    word-level vocabulary, like the embedded model's) uses only words the model knows; return it."""
    if allow_empty and isinstance(prompt, str) and not prompt.strip():
        return ""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InveditError(f"the {what} is empty")
    prompt = " ".join(prompt.split())
    n = len(tokenizer(prompt, verbose=False).input_ids)  # with BOS/EOS; verbose=False: no transformers length warning
    if n > tokenizer.model_max_length:
        raise InveditError(f"the {what} is too long ({n - 2} tokens; the model reads at most "
                           f"{tokenizer.model_max_length - 2})")
    vocabulary = word_vocabulary(tokenizer)
    if vocabulary is not None:
        # CLIP's pre-tokenizer splits text into runs of letters, single digits and punctuation; a digit or a single
        # character is one token anyway, so only letter runs can be unknown words.
        words = dict.fromkeys(re.findall(r"[^\W\d_]+", prompt.lower()))
        unknown = [w for w in words if len(w) > 1 and w not in vocabulary]
        if unknown:
            shown = ", ".join(repr(w) for w in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise InveditError(f"the {what} has words this model does not know: {shown} (its vocabulary of "
                               f"{len(vocabulary)} words: {' '.join(sorted(vocabulary))})")
    return prompt


#: Whole-word vocabularies already read, by tokenizer.
_WORD_VOCABULARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: A tokenizer with fewer tokens than this is a word-level vocabulary (real CLIP BPE has 49 408).
WORD_LEVEL_MAX_TOKENS = 5000


def word_vocabulary(tokenizer) -> frozenset[str] | None:
    """The whole words of a word-level CLIP tokenizer (the embedded and test models'); ``None`` for a real BPE one.

    On a word-level vocabulary any other word is split into characters that the model never saw together, so an
    edit with it is meaningless; real BPE tokenizers encode every word meaningfully.
    """
    if len(tokenizer) >= WORD_LEVEL_MAX_TOKENS:
        return None
    cached = _WORD_VOCABULARIES.get(tokenizer)
    if cached is None:
        words = {t[: -len("</w>")] for t in tokenizer.get_vocab() if t.endswith("</w>")}
        cached = frozenset(w for w in words if len(w) > 1 and w.isascii() and w.isalpha())
        _WORD_VOCABULARIES[tokenizer] = cached
    return cached or None  # no whole words at all: not a word-level vocabulary (or an empty tokenizer)


def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """The conditioning of each prompt as one tensor per prompt (the model family's
    `invedit.backbones.Backbone.encode_prompts`): SD 1.x/2.x (N, 77, D); SDXL (N, 78, 2048) with the pooled
    embedding as the last token."""
    return backbone(pipe).encode_prompts(prompts)


def _normalise(word: str) -> str:
    return re.sub(r"[^\w]", "", word.lower())


def word_token_indices(prompt: str, word: str, tokenizer, first: int = 1, limit: int | None = None) -> list[int]:
    """Token positions (BOS = 0) of every occurrence of ``word`` among the space-separated words of ``prompt``.

    Matching ignores case and punctuation; a word that BPE splits into several tokens yields all of them.
    ``first``: the first word's position (1 after CLIP's BOS; 0 for T5, which has none); ``limit``: positions
    kept (default the tokenizer's ``model_max_length``). Each word is tokenized alone, which is how CLIP's BPE
    and T5's SentencePiece split a prompt (both split at spaces first).
    """
    target = _normalise(word)
    out: list[int] = []
    position = first
    for w in prompt.split():
        n = len(tokenizer(w, add_special_tokens=False).input_ids)
        if _normalise(w) == target:
            out.extend(range(position, position + n))
        position += n
    limit = tokenizer.model_max_length if limit is None else limit
    return [i for i in out if i < limit]


def require_word(prompt: str, word: str, tokenizer, what: str) -> list[int]:
    """`word_token_indices` that raises a clear error when ``word`` is not a word of ``prompt``."""
    inds = word_token_indices(prompt, word, tokenizer)
    if not inds:
        raise InveditError(f"{word!r} is not a word of the {what} {prompt!r}")
    return inds


def blend_word_tokens(source_prompt: str, target_prompt: str, words: tuple[str, str],
                      tokenizer) -> tuple[list[int], list[int]]:
    """Token positions of LocalBlend's ``(source word, target word)`` in their prompts.

    An added or removed object is named in one prompt only ("star star" when a star is added): a blend word
    missing from its own prompt is accepted when it is a word of the other prompt, and reads no map there (the
    reference code reads none either). A word in neither prompt is an error (a typo, most likely).
    """
    src = word_token_indices(source_prompt, words[0], tokenizer)
    tgt = word_token_indices(target_prompt, words[1], tokenizer)
    if not src and not word_token_indices(target_prompt, words[0], tokenizer):
        raise InveditError(f"blend word {words[0]!r} is not a word of the source prompt {source_prompt!r} "
                           "(nor of the target prompt)")
    if not tgt and not word_token_indices(source_prompt, words[1], tokenizer):
        raise InveditError(f"blend word {words[1]!r} is not a word of the target prompt {target_prompt!r} "
                           "(nor of the source prompt)")
    return src, tgt
