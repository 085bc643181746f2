"""NFE, time and memory per edit on SD 3 / 3.5 and FLUX.1: euler+X against direct+X.

    python benchmarks/flow_speed.py                 # everything below (CPU: about 5 minutes)
    python benchmarks/flow_speed.py --parts nfe     # NFE per edit only (tiny models: seconds)
    python benchmarks/flow_speed.py --parts published   # only the papers' step counts and the stores' memory

Parts:
- ``nfe``: NFE per edit (inversion + edit) of {euler, direct} × {none, shared-attention} at 28 and 50 steps on
  the tiny SD3 and FLUX.1-dev pipelines. NFE depends only on the model family's row layout (SD3: two CFG rows per
  branch; FLUX.1-dev: one row, guidance as an input), not on its size, so these are the real models' counts too.
  Then each flow method of issue #23 (and ``direct`` + each flow editor) at the step count of its paper's PIE-Bench
  row (`PUBLISHED_STEPS`), beside the NFE the paper publishes and the count its reference code makes (read from
  that code: where they differ, the published count and the code's agree, and invedit's differs, see the notes).
  NFE is invedit's `RunStats` count: network rows evaluated (a CFG pair is two rows; a FLUX.1-dev row is one).
- ``sd35``: an SD3.5-medium-shaped transformer (random weights, float32) at 1024² on this machine. Its 24 blocks
  (13 with SD3.5's second attention) are timed as three shallow copies at full width and token count — (2 blocks,
  1 dual), (3, 1 dual), (3, 2 dual) — from which the full depth follows linearly (blocks are identical apart from
  the dual attention); at batch 1 and 2, so a call's cost is a line in its rows. Projected to a 28-step edit.
- ``memory``: parameters of the real SD3.5-medium/large and FLUX.1-dev networks (built on the meta device from
  their published configs: no weights) and what fits in 16 and 24 GB of GPU memory in bfloat16, without offload,
  with ``--offload model`` (the largest network at a time) and ``--offload sequential`` (one layer at a time).
Results go to ``benchmarks/flow_speed.json`` and ``benchmarks/flow_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
SOURCE, TARGET = "a red square on a striped background", "a blue star on a striped background"
EDITORS = ("none", "shared-attention")

#: SD3.5-medium's transformer (stabilityai/stable-diffusion-3.5-medium, transformer/config.json).
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
SD35_LARGE = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                  num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm")
#: FLUX.1-dev's transformer (black-forest-labs/FLUX.1-dev, transformer/config.json).
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64, vocab_size=32128,
              feed_forward_proj="gated-gelu", is_encoder_decoder=False)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, vocab_size=49408)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, vocab_size=49408)
VAE_16CH = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False)


#: Each flow method at its paper's PIE-Bench step count (FlowEdit: its official configs, SD3_exp.yaml /
#: FLUX_exp.yaml; KV-Edit: its gradio page's 28 steps): (family, steps, inversion+editor, editor options, published
#: NFE or None, the official code's NFE, what the reference code evaluates, read from it). FLUX.1-dev rows are one
#: network row per call (guidance distilled). Rows with a mode option run invedit's other mode; Direct rows have no
#: official code.
PUBLISHED_STEPS: tuple[tuple[str, int, str, dict, int | None, int | None, str], ...] = (
    ("flux", 15, "rf-solver+rf-solver-edit", {}, 60, 60,
     "30 + 30 = 60: inversion 2/step; edit 2/step, the target alone (V read from the inversion's store)"),
    ("flux", 15, "rf-solver+rf-solver-edit", {"features": "source"}, 60, 60, "(invedit's source-branch mode)"),
    ("flux", 15, "fireflow+rf-solver-edit", {}, 32, 32, "16 + 16 = 32: N + 1 per pass, the target alone"),
    ("flux", 8, "fireflow+rf-solver-edit", {"inject": 1}, 18, 18, "9 + 9 = 18 (its 8-step scripts: inject 1)"),
    ("flux", 8, "fireflow+rf-solver-edit", {"inject": 1, "features": "source"}, 18, 18,
     "(invedit's source-branch mode)"),
    ("flux", 28, "rf-inversion+none", {}, None, 56,
     "28 + 28 = 56: one call per step each way (diffusers RFInversionFluxPipeline)"),
    ("flux", 15, "uniedit+uniedit", {}, 28, 28, "10 + 18 = 28: Uni-Inv ⌊0.6·15⌋ + 1, then 9 × (source + target)"),
    ("sd3", 50, "none+flowedit", {}, None, 132, "33 calls × 4 CFG rows = 132 (n_max 33 of 50)"),
    ("flux", 28, "none+flowedit", {}, None, 48, "24 × 2 rows = 48 (n_max 24 of 28)"),
    # The FlowEdit family (issue 33), each at its official config's step count.
    ("sd3", 40, "none+dnaedit", {}, None, 108,
     "27 + 27 × 2 = 81 rows; the official SD3 inversion batches its one row twice (27 × 2 + 27 × 2 = 108)"),
    ("flux", 28, "none+dnaedit", {}, None, 48, "24 + 24 = 48 (T_start 4 of 28; one row each way)"),
    ("sd3", 50, "none+drfs", {}, None, 200, "50 calls × 4 CFG rows = 200 (num_steps 50 of 50)"),
    ("sd3", 33, "none+flowalign", {}, None, 99,
     "33 × 3 rows = 99 (target CFG pair against the source prompt + source)"),
    ("flux", 28, "euler+kv-edit", {}, None, 52,
     "28 + 24 = 52: the gradio page inverts all N steps (K/V and latents stored), then the foreground tokens alone "
     "over N − skip (4 of 28); its `Flux_kv_edit.forward` inverts N − skip: 24 + 24 = 48"),
    ("flux", 28, "euler+kv-edit", {"layout": "exact"}, None, 52, "(invedit's same-level mode: source rows beside)"),
    ("flux", 28, "direct+kv-edit", {}, None, None, ""),
    ("flux", 28, "direct+kv-edit", {"layout": "exact"}, None, None, ""),
    ("flux", 50, "stable-flow+stable-flow", {}, None, 150,
     "50 + 100 = 150: inversion 1/step at guidance 1; edit [source, target] rows every step (run_stable_flow.py)"),
    ("flux", 15, "direct+rf-solver-edit", {}, None, None, ""),
    ("flux", 8, "direct+rf-solver-edit", {"inject": 1}, None, None, ""),
    ("flux", 15, "direct+rf-solver-edit", {"features": "source"}, None, None, ""),
    ("flux", 15, "direct+uniedit", {}, None, None, ""),
    ("flux", 15, "direct+shared-attention", {}, None, None, ""),
    ("flux", 15, "direct+none", {}, None, None, ""),
    ("flux", 28, "direct+none", {}, None, None, ""),
    ("sd3", 50, "direct+none", {}, None, None, ""),
)


def published_steps_part() -> dict:
    """NFE (inversion, edit) of every `PUBLISHED_STEPS` row on the tiny pipelines; a method this branch does not
    register is reported as missing."""
    from PIL import Image

    import invedit
    from invedit.editing import EDITORS
    from invedit.inversion import INVERSIONS
    from invedit.testing import tiny_pipeline

    image = Image.new("RGB", (64, 64), (120, 60, 30))
    pipes = {kind: tiny_pipeline(kind=kind) for kind in ("sd3", "flux")}
    out: dict = {}
    for kind, steps, method, options, published, official, reference in PUBLISHED_STEPS:
        inversion, editor = method.split("+")
        key = f"{kind}/{steps}/{method}" + "".join(f"/{k}={v}" for k, v in options.items())
        row: dict = {"published": published, "official": official, "reference": reference, "options": options}
        if inversion not in INVERSIONS or editor not in EDITORS:
            out[key] = {**row, "missing": True}
            continue
        if getattr(EDITORS[editor], "takes_mask", False):  # KV-Edit: the left half of the image is the edit region
            options = {**options, "mask": Image.fromarray(np.repeat(np.repeat(
                np.array([[255, 0]], dtype=np.uint8), 32, axis=1), 64, axis=0))}
        result = invedit.edit(pipes[kind], image, SOURCE, TARGET, inversion=inversion, editor=editor, steps=steps,
                              guidance_scale=3.5, **options)
        options = row["options"]
        out[key] = {**row, "nfe_inversion": result.nfe_inversion, "nfe_edit": result.nfe_edit}
        if "inversion_features" in result.settings:
            out[key]["stored_megabytes_tiny"] = result.settings["inversion_features"]["megabytes"]
    return out


def store_memory() -> dict:
    """Bytes of the features an inversion stores for each editor on FLUX.1-dev at 1024² (arithmetic, from its
    config): 4096 image tokens (64 × 64 packed 2×2 patches) and 512 text tokens, hidden size 24 × 128, bf16 (the
    model's dtype: the reference code keeps them as ``.cpu()`` of its bf16 model's tensors)."""
    image, text, hidden, nbytes = 4096, 512, FLUX_DEV["num_attention_heads"] * FLUX_DEV["attention_head_dim"], 2
    single = (text + image) * hidden * nbytes  # one single-stream block's projection: [text, image] tokens
    double = image * hidden * nbytes  # one double-stream block's image projection
    rf_blocks = 38 - 20  # single-stream blocks 20-37
    per_call_rf = rf_blocks * single
    kv_level = 2 * (FLUX_DEV["num_layers"] * double + FLUX_DEV["num_single_layers"] * single)
    gb = 1e9
    return {
        "single_block_V_MB": single / 1e6, "double_block_image_K_or_V_MB": double / 1e6,
        "rf_solver_edit": {"per_call_GB": per_call_rf / gb, "per_step_GB (RF-Solver: 2 calls)": 2 * per_call_rf / gb,
                           "inject 2, RF-Solver (4 calls) GB": 4 * per_call_rf / gb,
                           "inject 1, FireFlow (1 midpoint call) GB": per_call_rf / gb},
        "kv_edit": {"per_level_GB": kv_level / gb, "28 steps, skip 4 (24 levels) GB": 24 * kv_level / gb},
    }


def nfe_part(steps_list: tuple[int, ...] = (28, 50)) -> dict:
    """NFE (inversion, edit) per method on the tiny SD3 and FLUX.1-dev pipelines (their row layout is the real
    models')."""
    from PIL import Image

    import invedit
    from invedit.testing import tiny_pipeline

    image = Image.new("RGB", (64, 64), (120, 60, 30))
    out: dict = {}
    for kind in ("sd3", "flux"):
        pipe = tiny_pipeline(kind=kind)
        invedit.backbone(pipe).resolution = 64
        for steps in steps_list:
            for inversion in ("euler", "direct"):
                for editor in EDITORS:
                    result = invedit.edit(pipe, image, SOURCE, TARGET, inversion=inversion, editor=editor,
                                          steps=steps, guidance_scale=3.5)
                    out[f"{kind}/{steps}/{inversion}+{editor}"] = {"nfe_inversion": result.nfe_inversion,
                                                                   "nfe_edit": result.nfe_edit}
    return out


def _call_seconds(config: dict, rows: int, tokens_side: int, repeats: int) -> float:
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    model = SD3Transformer2DModel(**config).eval()
    x = torch.randn(rows, 16, tokens_side * 2, tokens_side * 2)
    text = torch.randn(rows, 77 + 256, 4096)
    pooled = torch.randn(rows, 2048)
    t = torch.full((rows,), 500.0)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t)
            best = min(best, time.perf_counter() - start)
    return best


def sd35_part(repeats: int = 1) -> dict:
    """Seconds per SD3.5-medium transformer call at 1024² (batch 1 and 2), from three shallow copies."""
    out: dict = {"threads": torch.get_num_threads()}
    side = 64  # 1024 px / VAE 8 / patch 2
    for rows in (1, 2):
        shallow = {
            (n, dual): _call_seconds({**SD35_MEDIUM, "num_layers": n, "dual_attention_layers": tuple(range(dual))},
                                     rows, side, repeats)
            for n, dual in ((2, 1), (6, 1), (6, 5))}
        plain = (shallow[(6, 1)] - shallow[(2, 1)]) / 4
        dual_extra = (shallow[(6, 5)] - shallow[(6, 1)]) / 4
        n_dual, n_layers = len(SD35_MEDIUM["dual_attention_layers"]), SD35_MEDIUM["num_layers"]
        full = shallow[(2, 1)] + (n_layers - 2) * plain + (n_dual - 1) * dual_extra
        out[f"batch{rows}"] = {"shallow": {f"{n}x{d}": s for (n, d), s in shallow.items()},
                               "plain_block": plain, "dual_extra": dual_extra, "full_call": full}
    return out


def project(nfe: dict, sd35: dict, steps: int = 28) -> dict:
    """Seconds per SD3.5-medium edit at 1024²: each step's call costs a + b·rows (the batch-1/2 line)."""
    b1, b2 = sd35["batch1"]["full_call"], sd35["batch2"]["full_call"]
    per_row, fixed = b2 - b1, 2 * b1 - b2
    out = {}
    for method in ("euler+none", "direct+none"):
        n = nfe.get(f"sd3/{steps}/{method}")
        if n is None:
            continue
        calls = steps + steps  # one inversion call and one edit call per step
        out[method] = {"nfe": n["nfe_inversion"] + n["nfe_edit"],
                       "seconds": calls * fixed + (n["nfe_inversion"] + n["nfe_edit"]) * per_row}
    return out


def _params(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def memory_part() -> dict:
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    counts = {
        "sd35-medium transformer": _params(lambda: SD3Transformer2DModel(**SD35_MEDIUM)),
        "sd35-large transformer": _params(lambda: SD3Transformer2DModel(**SD35_LARGE)),
        "flux-dev transformer": _params(lambda: FluxTransformer2DModel(**FLUX_DEV)),
        "t5-xxl encoder": _params(lambda: T5EncoderModel(T5Config(**T5_XXL))),
        "clip-l text": _params(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L))),
        "clip-g text": _params(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G))),
        "vae (16 ch)": _params(lambda: AutoencoderKL(**VAE_16CH)),
    }
    gb = {k: v * 2 / 1e9 for k, v in counts.items()}  # bfloat16
    models = {
        "SD3.5 medium": ["sd35-medium transformer", "t5-xxl encoder", "clip-l text", "clip-g text", "vae (16 ch)"],
        "SD3.5 large": ["sd35-large transformer", "t5-xxl encoder", "clip-l text", "clip-g text", "vae (16 ch)"],
        "FLUX.1-dev": ["flux-dev transformer", "t5-xxl encoder", "clip-l text", "vae (16 ch)"],
    }
    table = {}
    for name, parts in models.items():
        table[name] = {"all weights GB": sum(gb[p] for p in parts), "largest network GB": max(gb[p] for p in parts),
                       "largest network": max(parts, key=lambda p: gb[p])}
    return {"parameters": counts, "bf16_GB": gb, "models": table}


#: What the published-step-count table means (the counts are checked in tests/test_rf_solver_edit.py,
#: tests/test_rf_solver.py and tests/test_uniedit.py).
NFE_NOTES = [
    "- **RF-Solver-Edit, FireFlow** (`rf-solver-edit`, default `features=inversion`): equal to the official code. "
    "The inversion records the injected blocks' values (`invedit.features`) and the target is denoised alone: "
    "60 at 15 steps, FireFlow 32 and 18. With `features=source` the values come from the source branch denoised "
    "beside the target with the same solver (its reconstruction too): 90, 48 and 27.",
    "- **direct + rf-solver-edit**: Euler inversion (N), the target every step (N); the injected steps read the "
    "pinned source's values stored by the inversion at their own level, but the top level, which no inversion "
    "evaluates, needs the source row once: 31 at 15 steps (the goal 30 + that row), 17 at 8 (inject 1). With "
    "`features=source`: the source rows at every injected step, 32.",
    "- **KV-Edit** (mask given; default `layout=reference`): the official gradio path, 28 + 24 = 52 at 28 steps "
    "(the inversion records every block's image keys/values at the 24 levels the edit reads; the foreground alone "
    "is denoised). `layout=exact` computes the source rows beside the foreground at the same level instead: 76. "
    "`direct+kv-edit` reads the store in either layout (exact: at each step's own level, the pinned source's): 52.",
    "- **UniEdit-Flow, RF-Inversion, FlowEdit**: equal to the reference code. UniEdit's editor reads both branches "
    "every step, so `direct+uniedit` (the whole 15 steps, Direct's full inversion) costs 45 against Uni-Inv's 28 "
    "(α = 0.6: 9 steps inverted and edited). FlowEdit counts CFG rows (SD 3: 4 per step); papers that count a "
    "CFG pair as one evaluation would print 66 for SD 3.",
    "- **DNAEdit, DRFS, FlowAlign** (issue 33): equal to the reference code, except DNAEdit's SD 3 inversion, "
    "whose official call batches its one conditional row twice (its CFG flag is still the target's) and combines "
    "them at scale 1: 108 there, 81 here, the same numbers. FlowAlign reads three rows per step to FlowEdit's four "
    "(its target's CFG pair uses the source prompt as the negative one, the source velocity is unguided) but "
    "runs every step (FlowEdit skips the noisiest 17 of 50). DRFS counts like FlowEdit, all 50 steps.",
    "- **Stable Flow**: equal to the reference code: Euler inversion at guidance 1 (N), then both rows every step "
    "(its vital layers share keys/values at every step, so Direct's pinned source rows are always read): 150 at its "
    "50 steps. The instruction-trained baselines (`none+instruct`, not in this table: their tiny pipelines are "
    "`tiny_instruction_pipeline`'s) cost their pipeline's calls, counted in tests/test_instruct.py: FLUX.1 Kontext "
    "one row per step (28 at its pipeline's default 28 steps), Qwen-Image-Edit two with true CFG (100 at 50).",
]


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# Flow models: NFE, time and memory per edit", "",
             f"Machine: {results['machine']}; torch {results['torch']}. Written by `benchmarks/flow_speed.py`.", ""]
    if "nfe" in results:
        methods = [f"{i}+{e}" for e in EDITORS for i in ("euler", "direct")]
        lines += ["## NFE per edit (inversion + edit), guidance 3.5, default editor options", "",
                  "| family | steps | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
        for kind in ("sd3", "flux"):
            for steps in (28, 50):
                cells = []
                for m in methods:
                    n = results["nfe"][f"{kind}/{steps}/{m}"]
                    cells.append(f"{n['nfe_inversion'] + n['nfe_edit']} ({n['nfe_inversion']} + {n['nfe_edit']})")
                lines.append(f"| {'SD3/3.5' if kind == 'sd3' else 'FLUX.1-dev'} | {steps} | {' | '.join(cells)} |")
        lines.append("")
    if "nfe_published" in results:
        lines += ["## NFE per edit at the papers' step counts: invedit against the official code", "",
                  "Measured on the tiny pipelines (`RunStats`: rows evaluated, inversion + edit; a family's row layout "
                  "is the real model's, so these are FLUX.1-dev's and SD 3's counts), beside what the official code "
                  "evaluates at the same setting (read from that code, and counted on the tiny FLUX in "
                  "`tests/test_flow_parity2.py`) and the NFE the paper publishes. Default options unless a mode is "
                  "named; Direct pairings have no official code.", "",
                  "| model | steps | method | invedit NFE | official code | ≤ official | published | "
                  "what the official code evaluates |", "|---|---|---|---|---|---|---|---|"]
        for key, row in results["nfe_published"].items():
            kind, steps, method = key.split("/")[:3]
            options = ", ".join(f"{k}={v}" for k, v in row["options"].items())
            name = f"{method} ({options})" if options else method
            model = "SD3/3.5" if kind == "sd3" else "FLUX.1-dev"
            total = None if row.get("missing") else row["nfe_inversion"] + row["nfe_edit"]
            measured = ("not on this branch" if total is None else
                        f"{total} ({row['nfe_inversion']} + {row['nfe_edit']})")
            official = row.get("official")
            within = "" if official is None or total is None else ("yes" if total <= official else "**no**")
            published = "—" if row["published"] is None else str(row["published"])
            lines.append(f"| {model} | {steps} | {name} | {measured} | {'—' if official is None else official} | "
                         f"{within} | {published} | {row['reference'] or '—'} |")
        lines += ["", *NFE_NOTES, ""]
    if "store_memory" in results:
        m = results["store_memory"]
        rf, kv = m["rf_solver_edit"], m["kv_edit"]
        lines += ["## Memory of the stored features (FLUX.1-dev at 1024², bf16, on the CPU)", "",
                  "Arithmetic from FLUX.1-dev's config (hidden size 3072; 4096 image tokens + 512 text tokens), in "
                  "the model's dtype as the official code keeps them (`.cpu()` of its bf16 tensors). A single-stream "
                  f"block's V ([text, image]): {m['single_block_V_MB']:.1f} MB per call; a double-stream block's "
                  f"image K or V: {m['double_block_image_K_or_V_MB']:.1f} MB.", "",
                  "| editor | per call / level | per step | at the default setting |", "|---|---|---|---|",
                  f"| rf-solver-edit (V of single blocks 20–37) | {rf['per_call_GB']:.2f} GB per call | "
                  f"{rf['per_step_GB (RF-Solver: 2 calls)']:.2f} GB (RF-Solver: start + midpoint) | inject 2: "
                  f"{rf['inject 2, RF-Solver (4 calls) GB']:.2f} GB; FireFlow inject 1 (one midpoint): "
                  f"{rf['inject 1, FireFlow (1 midpoint call) GB']:.2f} GB |",
                  f"| kv-edit, layout=reference (image K and V of all 57 blocks) | {kv['per_level_GB']:.2f} GB per "
                  f"level | {kv['per_level_GB']:.2f} GB (one call) | 28 steps, skip 4: "
                  f"{kv['28 steps, skip 4 (24 levels) GB']:.1f} GB |", "",
                  "The single-stream blocks' stored projection includes the 512 text tokens (the official stores "
                  "KV-Edit's image tokens only: 2.87 GB per level). `features=source` / `layout=exact` store "
                  "nothing (they compute the source rows instead); Direct + kv-edit in the exact layout stores the "
                  "same per level as the reference layout. On the tiny test model the stores are "
                  + ", ".join(f"{k.split('/')[2]}: {v['stored_megabytes_tiny']:.2f} MB" for k, v in
                              results["nfe_published"].items() if "stored_megabytes_tiny" in v
                              and not v["options"]) + ".", ""]
    if "sd35" in results:
        s = results["sd35"]
        lines += ["## SD3.5-medium-shaped transformer at 1024² on this CPU (float32, random weights)", "",
                  f"Torch threads: {s['threads']}. One call (4096 image + 333 text tokens):", "",
                  "| batch | plain block | dual-attention extra | full call (24 blocks) |", "|---|---|---|---|"]
        for rows in (1, 2):
            b = s[f"batch{rows}"]
            lines.append(f"| {rows} | {b['plain_block']:.2f} s | {b['dual_extra']:.2f} s | {b['full_call']:.1f} s |")
        if "projection" in results:
            lines += ["", "Projected per edit at 28 steps (transformer calls only):", "",
                      "| method | NFE | seconds |", "|---|---|---|"]
            for m, p in results["projection"].items():
                lines.append(f"| {m} | {p['nfe']} | {p['seconds']:.0f} |")
        lines.append("")
    if "memory" in results:
        m = results["memory"]
        lines += ["## Weights in bfloat16 (parameters from the published configs, counted on the meta device)", "",
                  "| network | parameters | GB (bf16) |", "|---|---|---|"]
        for k, v in m["parameters"].items():
            lines.append(f"| {k} | {v / 1e9:.2f} B | {m['bf16_GB'][k]:.1f} |")
        lines += ["", "| model | all weights | no offload: fits 24 / 16 GB | `--offload model`: largest network | "
                      "fits 24 / 16 GB |", "|---|---|---|---|---|"]
        for name, row in m["models"].items():
            total, largest = row["all weights GB"], row["largest network GB"]
            fits = " / ".join("yes" if total + 2 < cap else "no" for cap in (24, 16))
            fits_model = " / ".join("yes" if largest + 2 < cap else "no" for cap in (24, 16))
            lines.append(f"| {name} | {total:.1f} GB | {fits} | {largest:.1f} GB ({row['largest network']}) | "
                         f"{fits_model} |")
        lines += ["", "\"Fits\" leaves 2 GB for activations at 1024² and the CUDA context (an estimate, not a "
                      "measurement); `--offload sequential` holds one layer at a time and fits all three in 16 GB, "
                      "at several times the run time."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="nfe,sd35,memory")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "flow_speed.json")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.update(machine=f"{platform.machine()} {platform.processor() or ''} cpu={torch.get_num_threads()}",
                   torch=torch.__version__)
    if "nfe" in parts:
        results["nfe"] = nfe_part()
    if "nfe" in parts or "published" in parts:
        results["nfe_published"] = published_steps_part()
        results["store_memory"] = store_memory()
    if "sd35" in parts:
        results["sd35"] = sd35_part(args.repeats)
    if "nfe" in results and "sd35" in results:
        results["projection"] = project(results["nfe"], results["sd35"])
    if "memory" in parts:
        results["memory"] = memory_part()
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(results, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
