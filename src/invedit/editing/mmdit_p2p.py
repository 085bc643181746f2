"""Prompt-to-Prompt for MM-DiT (SD 3 / 3.5, FLUX.1 dev and schnell): Shin et al., "Exploring Multimodal Diffusion
Transformers for Enhanced Prompt-based Image Editing", ICCV 2025 (arXiv 2508.07519; official code
SNU-VGILab/exploring-mmdit, utils/dit_utils.py, attn_processors.py and common.py, read at commit a1721cd).

Joint attention has no separate cross-attention map to swap: image and text tokens share one softmax. The paper
splits it into its image→image, image→text, text→image and text→text blocks and edits by replacing projections: with
``method="qiki"`` (the paper's and the default) the target branch's image queries and keys (q_i, k_i) are the
source's, while its text tokens and its values stay its own, during the first ``replace_steps`` of the steps and in
every attention layer (``replace_blocks``). The other projection variants of the official code: ``qk`` (all q and
k), ``qi``, ``ki``, ``qikt``, ``qtki``, ``qtkt``, ``kivi`` (k_i and v_i). (Its attention-region variants I2I, T2I,
I2T, T2T, which rewrite the softmax logits, are not offered.)

LocalBlend, as in P2P: during the first ``local_blend_steps`` of the steps, the text→image attention of the blend
words (``local_blend_words`` "SRC TGT": the source word in the source branch, the target word in the target branch;
softmax over all keys, mean over heads, over the word's token columns, image queries only; from q and k before the
replacement) is stored in the ``aggregate_blocks`` layers, averaged over those layers and the steps so far,
smoothed by a 7×7 Gaussian (σ 1) on the token grid, on SD3 max-pooled 3×3, upsampled to the latent, divided by its
maximum and thresholded (``local_blend_threshold``); outside the union of both branches' masks the target is set to
the source after each step. SD3's word columns are its CLIP positions and 77 + its T5 positions (``tokenizer_choice``
"both"/"clip"/"t5"), FLUX's its T5 positions.

Official conventions kept (they are the method, not accidents): block indices count the transformer's attention
processors in order (``pipe.transformer.attn_processors``: SD3.5's second, image-only ``attn2`` processors take an
index but are never controlled, as in the official code); only the conditional rows are controlled (under SD3's CFG
the target's unconditional row is not); the step windows are ``int(N·fraction)``. ``aggregate_blocks`` by default:
the paper's top-5 blocks of the real models (common.py TOP5_BLOCKS: SD3-medium [7, 8, 5, 4, 9], SD3.5-medium
[7, 9, 8, 5, 10], SD3.5-large (and -turbo) [18, 21, 20, 24, 16], FLUX.1-dev and -schnell [18, 17, 12, 14, 11]); on
any other model the blocks at the same relative depth (block b of the reference's n_ref joint blocks → block
⌊(b + ½)·n / n_ref⌋ of the model's n; SD3-medium is the reference of SD3-shaped models, FLUX.1-dev of FLUX-shaped
ones). FLUX.1-schnell (4 steps) follows the official notebook's few-step rule: ``replace_steps`` 0.25 (the first
step) in the first two thirds of the attention processors (38 of 57).

Where the official code differs from this one: it edits generated pairs only (source and target from the same seeded
noise; `invedit.edit` with no image does that), here any flow inversion supplies the start (with ``direct`` the
source branch is z* itself); the maps are computed per head in float32, never as the full (S × S) matrix.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones import backbone
from ..backbones.base import LayerInfo
from ..errors import InveditError, check_number
from ..prompts import blend_word_tokens, word_token_indices
from ..sampling import Branches, Row
from .base import AttentionEditor, register
from .joint_attention import JointEditProcessor
from .p2p import parse_blend_words

#: What each projection method replaces in the target's conditional row: (q, k, v) parts, "i" image, "t" text.
METHODS: dict[str, tuple[str, str, str]] = {
    "qiki": ("i", "i", ""), "qk": ("it", "it", ""), "qi": ("i", "", ""), "ki": ("", "i", ""),
    "qikt": ("i", "t", ""), "qtki": ("t", "i", ""), "qtkt": ("t", "t", ""), "kivi": ("", "i", "i"),
}
#: The paper's top-5 blocks for LocalBlend per real model, in attention-processor indices (common.py TOP5_BLOCKS).
TOP5_BLOCKS = {"sd3-m": [7, 8, 5, 4, 9], "sd3.5-m": [7, 9, 8, 5, 10], "sd3.5-l": [18, 21, 20, 24, 16],
               "flux-dev": [18, 17, 12, 14, 11]}
#: Joint blocks of the models whose top-5 list is the reference of the depth rule (per family).
DEPTH_REFERENCE = {"sd3": ("sd3-m", 24), "flux": ("flux-dev", 19)}
#: FLUX.1-schnell's few-step rule (examples/flux_schnell_editing.ipynb): replace in the first step of 4 and in the
#: first 38 of the 57 attention processors.
FEW_STEP_REPLACE_STEPS = 0.25
FEW_STEP_BLOCK_FRACTION = 38 / 57
TOKENIZER_CHOICES = ("both", "clip", "t5")
CONDITIONAL: tuple[Row, Row] = (("source", "cond"), ("target", "cond"))


def known_model(model) -> str | None:
    """The real model a transformer's shape identifies (the keys of `TOP5_BLOCKS`), or None."""
    cfg = model.denoiser.config
    if model.family == "flux":
        return "flux-dev" if (cfg.num_layers, cfg.num_single_layers) == (19, 38) else None
    dual = list(getattr(cfg, "dual_attention_layers", None) or ())
    if cfg.num_layers == 24:
        return "sd3.5-m" if dual else "sd3-m"
    return "sd3.5-l" if cfg.num_layers == 38 else None


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """The (1, 1, size, size) normalised Gaussian of the official smoothing (common.py gaussian_smoothing)."""
    x = torch.arange(size) - size // 2
    grid_x = x.repeat(size, 1).float()
    kernel = torch.exp(-(grid_x**2 + grid_x.t() ** 2) / (2 * sigma**2))
    return (kernel / kernel.sum()).view(1, 1, size, size)


def step_window(name: str, value: Any, steps: int) -> tuple[int, int]:
    """A fraction f → steps [0, int(N·f)); a pair (a, b) → [int(N·a), int(N·b)) (the official windows)."""
    if isinstance(value, str):
        value = [float(x) for x in value.split(",")] if "," in value else _number(name, value)
    pair = list(value) if isinstance(value, (list, tuple)) else [0.0, value]
    if len(pair) != 2:
        raise InveditError(f"mmdit-p2p {name} must be a fraction of the steps or a pair START,END, got {value!r}")
    low, high = (check_number(name, float(v) if isinstance(v, int) else v, 0.0, 1.0) for v in pair)
    if low > high:
        raise InveditError(f"mmdit-p2p {name}: start {low:g} is after end {high:g}")
    return int(steps * low), int(steps * high)


def _number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InveditError(f"mmdit-p2p {name} must be a number, got {text!r}") from None


def block_list(name: str, value: Any, count: int) -> list[int]:
    """Attention-processor indices from a list or "0,1" (the CLI's form), each in [0, count)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise InveditError(f"mmdit-p2p {name} must be block indices (a list, or 0,1 on the command line), "
                           f"'all' or 'auto', got {value!r}")
    out = []
    for item in items:
        try:
            index = int(str(item).strip()) if not isinstance(item, int) or isinstance(item, bool) else item
        except ValueError:
            raise InveditError(f"mmdit-p2p {name}: {item!r} is not a block index") from None
        if isinstance(index, bool) or not 0 <= index < count:
            raise InveditError(f"mmdit-p2p {name}: block {item!r} is not one of this model's {count} attention "
                               f"processors (0-{count - 1})")
        out.append(index)
    return list(dict.fromkeys(out))


class FlowLocalBlend:
    """LocalBlend from the text→image maps of the blend words, averaged over the stored layers and steps."""

    def __init__(self, columns: tuple[list[int], list[int]], threshold: float, window: tuple[int, int],
                 kernel: int, sigma: float, max_pool: bool):
        self.columns, self.threshold, self.window = columns, threshold, window
        self.kernel, self.sigma, self.max_pool = kernel, sigma, max_pool
        self.total: torch.Tensor | None = None  # (2, image tokens): sum of the stored maps
        self.stored = 0
        self.mask: torch.Tensor | None = None  # the last blend mask (1, 1, H, W), for inspection

    def active(self, step: int) -> bool:
        return self.window[0] <= step < self.window[1]

    def store(self, query: torch.Tensor, key: torch.Tensor, image: slice, text_start: int) -> None:
        """Add one layer's maps; ``query``/``key`` are the (2, heads, tokens, d) [source, target] conditional rows."""
        heads, n_image = query.shape[1], image.stop - image.start
        scale = query.shape[-1] ** -0.5
        maps = torch.zeros(2, n_image, device=query.device)
        for branch, columns in enumerate(self.columns):
            if not columns:
                continue  # the word is not in this branch's prompt: no map (as the official code)
            index = torch.tensor([text_start + c for c in columns], device=query.device)
            for h in range(heads):  # one head at a time: never the whole (tokens × tokens) matrix
                probs = (query[branch, h, image].float() @ key[branch, h].float().T * scale).softmax(-1)
                maps[branch] += probs[:, index].mean(-1)
        maps /= heads
        self.total = maps if self.total is None else self.total + maps
        self.stored += 1

    def __call__(self, step: int, latents: Branches, patch: int) -> Branches:
        if not self.active(step) or self.total is None:
            return latents
        H, W = latents.target.shape[-2:]
        maps = (self.total / self.stored).view(2, 1, H // patch, W // patch)
        maps = F.conv2d(maps, gaussian_kernel(self.kernel, self.sigma).to(maps), padding=self.kernel // 2)
        if self.max_pool:
            maps = F.max_pool2d(maps, kernel_size=3, stride=1, padding=1)
        maps = F.interpolate(maps, size=(H, W), mode="nearest")
        maps = maps / maps.amax(dim=(2, 3), keepdim=True).clamp_min(1e-30)
        masks = maps > self.threshold
        mask = self.mask = (masks[0] | masks[1]).unsqueeze(0).to(latents.target)
        return Branches(latents.source, latents.source + mask * (latents.target - latents.source))


@register
class MMDiTPromptToPrompt(AttentionEditor):
    """The target's image queries and keys are the source's (qiki) in joint attention, with LocalBlend."""

    name = "mmdit-p2p"
    description = ("Prompt-to-Prompt for SD3/FLUX joint attention (Shin et al., ICCV 2025): the target's image "
                   "queries/keys are the source's (method qiki), LocalBlend from the text->image maps")
    refusal = "it controls the joint image-text attention of SD3 / FLUX (use p2p on a UNet)"
    schedule_kinds = ("flow",)
    defaults: dict[str, Any] = {
        "method": "qiki", "replace_steps": None, "replace_blocks": None, "local_blend_words": None,
        "local_blend_threshold": 0.3, "local_blend_steps": 0.5, "aggregate_blocks": None,
        "local_blend_kernel": 7, "local_blend_sigma": 1.0, "local_blend_max_pool": None, "tokenizer_choice": "both",
    }

    def __init__(self, layers: dict[str, LayerInfo], replaced: frozenset[str], aggregated: frozenset[str],
                 method: str, replace_window: tuple[int, int], blend: FlowLocalBlend | None, text_first: bool,
                 patch: int, options: dict[str, Any]):
        super().__init__()
        self.layers, self.replaced, self.aggregated = layers, replaced, aggregated
        self.method, self.replace_window, self.blend = method, replace_window, blend
        self.text_first, self.patch, self.options = text_first, patch, options
        self.image_tokens: int | None = None  # set by the joint blocks' processors each call

    @classmethod
    def create(cls, pipe, source_prompt: str, target_prompt: str, steps: int, **options: Any) -> MMDiTPromptToPrompt:
        opts = cls.validate_options(options)
        model = backbone(pipe)
        if model.schedule_kind != "flow":
            raise InveditError(f"editor {cls.name!r} runs on SD3 / FLUX models; {model.family} models: use p2p")
        method = opts["method"]
        if method not in METHODS:
            raise InveditError(f"mmdit-p2p method must be one of {', '.join(METHODS)}, got {method!r}")
        names = [key[: -len(".processor")] for key in model.denoiser.attn_processors]
        infos = {info.name: info for _, _, info in model.attention_layers()}
        # Every attention processor but SD3.5's image-only attn2 (the official code leaves those alone).
        controllable = [n for n in names if n in infos and not n.endswith(".attn2")]
        few_step = model.family == "flux" and model.guidance_mode == "none"
        opts["model_reference"] = known_model(model)

        if opts["replace_steps"] is None:
            opts["replace_steps"] = FEW_STEP_REPLACE_STEPS if few_step else 0.2
        replace_window = step_window("replace_steps", opts["replace_steps"], steps)
        if opts["replace_blocks"] is None:
            opts["replace_blocks"] = (list(range(round(FEW_STEP_BLOCK_FRACTION * len(names)))) if few_step
                                      else "all")
        replaced = (controllable if opts["replace_blocks"] == "all"
                    else [names[i] for i in block_list("replace_blocks", opts["replace_blocks"], len(names))])

        blend = None
        aggregated: list[str] = []
        words = opts["local_blend_words"] = parse_blend_words(opts["local_blend_words"])
        if words:
            blend_word_tokens(source_prompt, target_prompt, words, model.tokenizer)  # in neither prompt: refused
            if opts["aggregate_blocks"] is None:
                opts["aggregate_blocks"] = cls.default_aggregate_blocks(model, names, infos)
            elif opts["aggregate_blocks"] == "all":
                opts["aggregate_blocks"] = [names.index(n) for n in controllable]
            chosen = block_list("aggregate_blocks", opts["aggregate_blocks"], len(names))
            aggregated = [names[i] for i in chosen if names[i] in controllable]
            if not aggregated:
                raise InveditError(f"mmdit-p2p aggregate_blocks {chosen} name only attention processors that are "
                                   "never controlled (SD3.5's attn2); choose others")
            choice = opts["tokenizer_choice"]
            if choice not in TOKENIZER_CHOICES:
                raise InveditError(f"mmdit-p2p tokenizer_choice must be one of {', '.join(TOKENIZER_CHOICES)}, "
                                   f"got {choice!r}")
            columns = tuple(cls.word_columns(model, prompt, word, choice)
                            for prompt, word in zip((source_prompt, target_prompt), words))
            threshold = check_number("local_blend_threshold", opts["local_blend_threshold"], 0.0, 1.0)
            kernel = check_number("local_blend_kernel", opts["local_blend_kernel"], 1, 63, integer=True)
            if kernel % 2 == 0:
                raise InveditError(f"mmdit-p2p local_blend_kernel must be odd, got {kernel}")
            sigma = check_number("local_blend_sigma", opts["local_blend_sigma"], 0.0, low_open=True)
            if opts["local_blend_max_pool"] is None:
                opts["local_blend_max_pool"] = model.family == "sd3"  # the official SD3 / FLUX masks (M6)
            blend = FlowLocalBlend(columns, threshold, step_window("local_blend_steps", opts["local_blend_steps"],
                                                                  steps),
                                   kernel, sigma, bool(opts["local_blend_max_pool"]))
            opts["word_columns"] = [list(c) for c in columns]
        opts["replace_until_step"] = replace_window[1]
        opts["replaced_layers"] = len(replaced)
        opts["aggregated_layers"] = aggregated
        layers = {n: infos[n] for n in set(replaced) | set(aggregated)}
        return cls(layers, frozenset(replaced), frozenset(aggregated), method, replace_window, blend,
                   model.family == "flux", model.patch, opts)

    @staticmethod
    def word_columns(model, prompt: str, word: str, choice: str = "both") -> list[int]:
        """The word's columns among the model's text tokens (`Backbone.text_layout`); on SD3 ``choice`` keeps
        CLIP's ("clip"), T5's ("t5") or both."""
        columns = []
        for k, (tokenizer, first, limit, offset) in enumerate(model.text_layout()):
            if model.family == "sd3" and choice != "both" and (k == 0) != (choice == "clip"):
                continue
            columns += [offset + i for i in word_token_indices(prompt, word, tokenizer, first=first, limit=limit)]
        return columns

    @staticmethod
    def default_aggregate_blocks(model, names: list[str], infos: dict[str, LayerInfo]) -> list[int]:
        """The paper's top-5 blocks on the real models; elsewhere the joint blocks at the same relative depth."""
        reference = known_model(model)
        if reference is not None:
            return list(TOP5_BLOCKS[reference])
        ref_name, ref_blocks = DEPTH_REFERENCE[model.family]
        joint = [n for n in names if n in infos and infos[n].place == "joint" and not n.endswith(".attn2")]
        picked = [joint[math.floor((b + 0.5) * len(joint) / ref_blocks)] for b in TOP5_BLOCKS[ref_name]]
        return [names.index(n) for n in dict.fromkeys(picked)]

    # ---- hooks -------------------------------------------------------------------------------------------------
    def wants_layer(self, info: LayerInfo) -> bool:
        return info.name in self.layers

    def attention_processor(self, info: LayerInfo, values=None) -> JointEditProcessor:
        return JointEditProcessor(self, info, self.text_first)

    def rows_read(self, step: int) -> frozenset[Row]:
        replacing = self.replace_window[0] <= step < self.replace_window[1]
        if replacing or (self.blend is not None and self.blend.active(step)):
            return frozenset(CONDITIONAL)
        return frozenset()

    def joint_attend(self, info: LayerInfo, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     image: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (batch, heads, tokens, d) of one joint-attention call → those to attend with."""
        s, t = (self.row_index(*row) for row in CONDITIONAL)
        if s is None or t is None:
            return query, key, value
        tokens = query.shape[2]
        text = slice(image.stop, tokens) if image.start == 0 else slice(0, image.start)
        if self.blend is not None and info.name in self.aggregated and self.blend.active(self.step):
            self.blend.store(query[[s, t]], key[[s, t]], image, text.start)  # before the replacement
        if not (self.replace_window[0] <= self.step < self.replace_window[1] and info.name in self.replaced):
            return query, key, value
        parts = {"i": image, "t": text}
        out = []
        for x, which in zip((query, key, value), METHODS[self.method]):
            if which:
                x = x.clone()
                for part in which:
                    x[t, :, parts[part]] = x[s, :, parts[part]]
            out.append(x)
        return out[0], out[1], out[2]

    def step_callback(self, step: int, latents: Branches) -> Branches:
        latents = super().step_callback(step, latents)
        return self.blend(step, latents, self.patch) if self.blend is not None else latents

    def settings(self) -> dict[str, Any]:
        return {"editor": self.name, **self.options}
