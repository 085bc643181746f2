"""Prompt handling: text embeddings, token lengths, and where a word's tokens sit in a prompt."""

from __future__ import annotations

import re

import torch

from .errors import InveditError


def check_prompt(prompt: str, tokenizer, what: str = "prompt") -> str:
    """Strip ``prompt`` and check it is non-empty and fits the text encoder; return it."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InveditError(f"the {what} is empty")
    prompt = " ".join(prompt.split())
    n = len(tokenizer(prompt).input_ids)
    if n > tokenizer.model_max_length:
        raise InveditError(f"the {what} is too long ({n - 2} tokens; the model reads at most "
                           f"{tokenizer.model_max_length - 2})")
    return prompt


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states (len(prompts), 77, D), padded to the tokenizer's max length (SPEC §1)."""
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    device = pipe.text_encoder.device
    return pipe.text_encoder(tok.input_ids.to(device))[0]


def _normalise(word: str) -> str:
    return re.sub(r"[^\w]", "", word.lower())


def word_token_indices(prompt: str, word: str, tokenizer) -> list[int]:
    """Token positions (BOS = 0) of every occurrence of ``word`` among the space-separated words of ``prompt``.

    Matching ignores case and punctuation; a word that BPE splits into several tokens yields all of them.
    """
    target = _normalise(word)
    out: list[int] = []
    position = 1
    for w in prompt.split():
        n = len(tokenizer(w, add_special_tokens=False).input_ids)
        if _normalise(w) == target:
            out.extend(range(position, position + n))
        position += n
    return [i for i in out if i < tokenizer.model_max_length]


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
