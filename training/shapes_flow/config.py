"""`FlowTrainConfig` (everything that determines the trained transformer), the ``--smoke`` overrides and the paths.

The flow model reuses the embedded UNet model's VAE, word tokenizer and text encoder unchanged (frozen), so that a
comparison of the two embedded models is about the backbone: only the MM-DiT is trained here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]  # training/shapes_flow/config.py → the repository
DEFAULT_RUN_DIR = REPO_ROOT / "toy_runs" / "shapes-flow"
WEIGHTS_DIR = REPO_ROOT / "src" / "invedit" / "toy" / "weights" / "shapes-flow"  # what the package ships
#: the embedded UNet model whose VAE, tokenizer and text encoder the flow model shares
UNET_MODEL_DIR = REPO_ROOT / "src" / "invedit" / "toy" / "weights" / "shapes-64"


@dataclass(frozen=True)
class FlowTrainConfig:
    """Everything that determines the trained weights."""

    seed: int = 20261205
    size: int = 64
    n_scenes: int = 30_000
    #: prompt tokens of each CLIP branch (the shapes captions need ≤ 13 with BOS/EOS); the T5 branch is absent and
    #: contributes ``t5_tokens`` zero tokens, as `StableDiffusion3Pipeline` does without a T5 encoder
    text_tokens: int = 16
    t5_tokens: int = 0
    # the MM-DiT (SD3Transformer2DModel): 2×2 patches of the 16×16 latent = 64 image tokens
    patch_size: int = 2
    layers: int = 6
    heads: int = 6
    head_dim: int = 32
    # rectified flow: x_σ = (1−σ)·x₀ + σ·ε, target ε − x₀; σ logit-normal, then shifted (Esser et al. 2024, §3.1)
    shift: float = 1.5
    logit_mean: float = 0.0
    logit_std: float = 1.0
    steps: int = 5000
    batch: int = 48
    lr: float = 3e-4
    warmup: int = 300
    decay_from: float = 0.6  # constant LR, then cosine to 10% from this fraction of the steps
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    # bookkeeping
    preview_steps: int = 20
    ckpt_minutes: float = 5.0
    log_every: int = 25
    max_threads: int = 2
    # the fine-tune stage (`--stage finetune`, training/shapes_flow/finetune.py): continues from an exported model's
    # transformer on freshly rendered scenes with the flow loss + ``ground_weight`` × a grounding loss on the joint
    # blocks' image→text attention (each object word's map on its object, background words' on the background)
    ft_scenes: int = 20000  # rendered and encoded once (latent posteriors + grounding targets), drawn from each step
    ft_steps: int = 4000
    ft_batch: int = 32
    ft_lr: float = 1e-4
    ft_warmup: int = 100
    ft_decay_from: float = 0.3
    ft_ema_decay: float = 0.998
    ground_weight: float = 0.1
    #: oversampling of one shape in the fine-tune's scenes: a rendered scene without ``ft_boost_shape`` is kept with
    #: probability ``ft_boost_keep`` (1.0: every scene, as the first five fine-tunes drew them; 0.5, the sixth's,
    #: raises that shape's share of the objects from about a quarter (23% of 2 000 scenes) to a third (34%))
    ft_boost_shape: str = "star"
    ft_boost_keep: float = 1.0
    #: weighting of each sample's grounding loss by its noise level: σᵖ / (the batch's mean σᵖ), so the loss keeps
    #: its scale and moves toward the noisiest inputs, where an edit from an inverted latent binds its words
    #: (`benchmarks/flow_binding_maps.md`); 0 (the first six fine-tunes): every sample alike
    ground_sigma_power: float = 0.0
    #: edit-binding samples (`training.shapes_flow.finetune.edit_binding_cache`): ``ft_edit_scenes`` two-object
    #: scenes, each with a colour edit, Euler-inverted once under the starting weights (``EDIT_STEPS`` steps, their
    #: source caption, guidance 1, as an edit inverts); each step adds ``ft_edit_batch`` of them at a level of the
    #: first third of the edit's steps, under their source or target caption, to the grounding loss only (0: none,
    #: as the first six fine-tunes)
    ft_edit_scenes: int = 0
    ft_edit_batch: int = 8

    def __post_init__(self) -> None:
        from invedit.toy.scenes import SHAPES

        if self.ft_boost_shape not in SHAPES:
            raise ValueError(f"ft_boost_shape must be one of {', '.join(SHAPES)}, not {self.ft_boost_shape!r}")
        if not 0 < self.ft_boost_keep <= 1:
            raise ValueError(f"ft_boost_keep must be in (0, 1], not {self.ft_boost_keep}")
        if self.ft_edit_scenes < 0 or self.ft_edit_batch < 1:
            raise ValueError(f"ft_edit_scenes must be ≥ 0 and ft_edit_batch ≥ 1, not {self.ft_edit_scenes} and "
                             f"{self.ft_edit_batch}")
        if not 0 <= self.ground_sigma_power <= 8:
            raise ValueError(f"ground_sigma_power must be in [0, 8], not {self.ground_sigma_power}")

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FlowTrainConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


#: ``--smoke``: every stage and the export for a few steps on a narrow model (seconds); the code paths are those of
#: the full configuration. One thread: bit-reproducible whatever else runs.
SMOKE = dict(n_scenes=64, layers=2, heads=2, head_dim=16, steps=6, batch=8, warmup=2, log_every=2,
             preview_steps=2, max_threads=1, ft_scenes=24, ft_steps=4, ft_batch=6, ft_warmup=2)

#: Editor settings recommended with the shipped model (its invedit.json): shared attention on the values of every
#: block for every step. The SD3 rule (values of the later half of the joint blocks, first 12% of the steps) leaves
#: the target free to move the objects on this model (background 19.8 dB, the same as no editor); sharing from the
#: first block on holds the layout (29.1 dB with Direct, 24.2 with Euler) at the price of colour edits (62% reach the
#: target colour, 88% when sharing starts at half depth). Chosen on 8 validation colour edits (seeds 1000–1007) at
#: guidance 2 (docs/embedded-model.md, "The flow model"); re-checked on the second to sixth fine-tunes' weights
#: (16 edits of toy-bench seed 2: 75% / 75% / 81% / 75% / 81% at 27.5 / 29.2 / 29.0 / 29.6 / 30.3 dB; from half depth
#: 88% / 94% / 94% / 100% / 100% at 24.5 / 25.8 / 25.5 / 25.8 / 26.6 dB), the same trade-off.
EDITOR_DEFAULTS: dict[str, dict[str, Any]] = {"shared-attention": {"share": "v", "blocks": "all", "start_layer": 0.0,
                                                                   "end_step": 1.0}}
#: Guidance the flow model's edits are measured at (its demo and benchmarks): at 3.5 and above the target branch
#: leaves the source's layout whatever the editor (background ≤ 23 dB on the validation edits).
EDIT_GUIDANCE = 2.0
#: Steps the flow model's edits are measured at (SD3's default 28); recommended with guidance in its invedit.json
EDIT_STEPS = 28
