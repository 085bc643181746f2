"""Token correspondences between a source and a target prompt, for Prompt-to-Prompt (Hertz et al. 2022).

* `refinement_mapper`: global alignment of the two token sequences; each target token points at its source
  token, or is new (alpha 0) — used by `AttentionRefine`.
* `replacement_mapper`: a (77, 77) matrix mapping source tokens to target tokens word by word, for prompts with
  the same number of words — used by `AttentionReplace`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InveditError

GAP, MATCH, MISMATCH = 0, 1, -1
LEFT, UP, DIAGONAL = 1, 2, 3


def align(x: list[int], y: list[int]) -> list[int]:
    """For each element of ``y``, the index of its aligned element of ``x`` (−1 where ``y`` inserts).

    Needleman–Wunsch with gap 0, match 1, mismatch −1. Ties prefer a gap in ``x`` (left), then a gap in ``y``
    (up), then the diagonal, as the Prompt-to-Prompt reference: with gap 0 a substituted word is treated as a
    deletion plus an insertion, so it gets no source attention.
    """
    n, m = len(x), len(y)
    score = np.zeros((n + 1, m + 1), dtype=np.int64)
    score[0, 1:] = np.arange(1, m + 1) * GAP
    score[1:, 0] = np.arange(1, n + 1) * GAP
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)
    trace[0, 1:], trace[1:, 0] = LEFT, UP
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            left = score[i, j - 1] + GAP
            up = score[i - 1, j] + GAP
            diag = score[i - 1, j - 1] + (MATCH if x[i - 1] == y[j - 1] else MISMATCH)
            best = max(left, up, diag)
            score[i, j] = best
            trace[i, j] = LEFT if best == left else UP if best == up else DIAGONAL
    mapping: list[int] = []
    i, j = n, m
    while i > 0 or j > 0:
        if trace[i, j] == DIAGONAL:
            i, j = i - 1, j - 1
            mapping.append(i)
        elif trace[i, j] == LEFT:
            j -= 1
            mapping.append(-1)
        else:
            i -= 1
    return mapping[::-1]


def refinement_mapper(source: str, target: str, tokenizer, max_len: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    """(mapper, alphas), each (max_len,): target token j reads source token ``mapper[j]`` where ``alphas[j]``=1.

    Tokens past the target's end map to the same position (the reference's convention).
    """
    x = tokenizer(source).input_ids
    y = tokenizer(target).input_ids
    mapping = align(x, y)
    mapper = torch.arange(max_len, dtype=torch.long)
    alphas = torch.ones(max_len)
    n = min(len(mapping), max_len)
    mapper[:n] = torch.tensor(mapping[:n], dtype=torch.long)
    alphas[:n] = (mapper[:n] >= 0).float()
    return mapper, alphas


def word_spans(prompt: str, tokenizer) -> list[list[int]]:
    """Token positions (BOS = 0) of each space-separated word of ``prompt``."""
    spans, position = [], 1
    for word in prompt.split():
        n = len(tokenizer(word, add_special_tokens=False).input_ids)
        spans.append(list(range(position, position + n)))
        position += n
    return spans


def replacement_mapper(source: str, target: str, tokenizer, max_len: int = 77) -> torch.Tensor:
    """(max_len, max_len) matrix M with target attention = source attention @ M (word-for-word swap).

    Raises when the prompts have different numbers of words (use refinement then).
    """
    xs, ys = word_spans(source, tokenizer), word_spans(target, tokenizer)
    if len(xs) != len(ys):
        raise InveditError(f"p2p mode 'replace' needs prompts with the same number of words "
                           f"({len(xs)} vs {len(ys)}); use mode 'refine'")
    mapper = torch.zeros(max_len, max_len)
    mapper[0, 0] = 1.0  # BOS
    for sx, sy in zip(xs, ys):
        sx = [i for i in sx if i < max_len]
        sy = [j for j in sy if j < max_len]
        if not sx or not sy:
            continue
        if len(sx) == len(sy):
            mapper[sx, sy] = 1.0
        else:
            for j in sy:
                mapper[sx, j] = 1.0 / len(sy)
    end_x = xs[-1][-1] + 1 if xs else 1
    end_y = ys[-1][-1] + 1 if ys else 1
    for r in range(max_len - max(end_x, end_y)):  # EOS and padding, position by position
        mapper[end_x + r, end_y + r] = 1.0
    return mapper
