"""Memory of FLUX.1-dev and SD 3.5 under ``--quantize``: parameter arithmetic for the real models, and a measured CPU
run of the tiny ones.

    python benchmarks/quantized_memory.py            # both parts (CPU: about a minute on an idle machine)
    python benchmarks/quantized_memory.py --parts arithmetic

Parts:
- ``arithmetic``: the real networks built on the meta device from their published configs (no weights; the configs
  are those of benchmarks/flow_speed.py), their parameters split into what ``--quantize`` quantises (the linear
  weights of the transformer and of T5, except T5's feed-forward output projections ``wo``, which transformers keeps
  out of quantisation) and the rest (bfloat16). Bytes per quantised weight: bf16 2, int8 1 (+ one scale per row),
  nf4 0.5 + 0.0645 (one 8-bit absmax per 64 weights, double-quantised). What fits a GPU of 8–80 GB without offload
  and with ``--offload model`` (the largest network at a time), leaving 2 GB for activations at 1024² and the CUDA
  context (an estimate, as in benchmarks/flow_speed.md).
- ``measured``: the tiny SD3 / FLUX.1-dev pipelines of `invedit.testing`, saved and loaded through `invedit.load`
  with and without ``quantize="int8"`` (optimum-quanto) on this CPU: the bytes each network's tensors actually
  occupy (quanto's int8 data and scales counted), and how far the quantised edit lands from the float32 one on each
  flow inversion (max |Δ| of the final latents, 2 steps, as tests/test_quantize_lora.py).
Results go to ``benchmarks/quantized_memory.json`` and ``benchmarks/quantized_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from flow_speed import CLIP_G, CLIP_L, FLUX_DEV, SD35_LARGE, SD35_MEDIUM, T5_XXL, VAE_16CH  # noqa: E402

#: Bytes per quantised weight of each setting (bf16: not quantised). nf4: 4 bits + an 8-bit absmax per block of 64
#: + a float32 scale per 256 blocks (bitsandbytes' double quantisation); int8: per-row scales ignored (< 0.1 %).
BYTES = {"bf16": 2.0, "int8": 1.0, "nf4": (4 + 8 / 64 + 32 / (64 * 256)) / 8}
GPUS = (8, 12, 16, 24, 32, 48, 80)
RESERVE_GB = 2.0
SOURCE, TARGET = "a red square on a striped background", "a blue star on a striped background"


def split_params(build, keep=lambda name: False) -> tuple[int, int]:
    """(parameters ``--quantize`` quantises: linear weights not kept, all the others) of a network on meta."""
    with torch.device("meta"):
        model = build()
    quantised = sum(m.weight.numel() for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and not keep(n))
    return quantised, sum(p.numel() for p in model.parameters()) - quantised


def arithmetic_part() -> dict:
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    nets = {
        "sd35-medium transformer": (split_params(lambda: SD3Transformer2DModel(**SD35_MEDIUM)), True),
        "sd35-large transformer": (split_params(lambda: SD3Transformer2DModel(**SD35_LARGE)), True),
        "flux-dev transformer": (split_params(lambda: FluxTransformer2DModel(**FLUX_DEV)), True),
        "t5-xxl encoder": (split_params(lambda: T5EncoderModel(T5Config(**T5_XXL)),
                                        keep=lambda n: n.endswith(".wo")), True),
        "clip-l text": (split_params(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L))), False),
        "clip-g text": (split_params(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G))), False),
        "vae (16 ch)": (split_params(lambda: AutoencoderKL(**VAE_16CH)), False),
    }
    gb = {setting: {name: ((q * BYTES[setting] if quantised else q * 2) + rest * 2) / 1e9
                    for name, ((q, rest), quantised) in nets.items()} for setting in BYTES}
    models = {
        "SD3.5 medium": ["sd35-medium transformer", "t5-xxl encoder", "clip-l text", "clip-g text", "vae (16 ch)"],
        "SD3.5 large": ["sd35-large transformer", "t5-xxl encoder", "clip-l text", "clip-g text", "vae (16 ch)"],
        "FLUX.1-dev": ["flux-dev transformer", "t5-xxl encoder", "clip-l text", "vae (16 ch)"],
    }
    table = {}
    for model, parts in models.items():
        for setting in BYTES:
            total = sum(gb[setting][p] for p in parts)
            largest = max(parts, key=lambda p: gb[setting][p])
            table[f"{model} {setting}"] = {
                "all GB": total, "largest network": largest, "largest GB": gb[setting][largest],
                "fits without offload": [g for g in GPUS if total + RESERVE_GB <= g],
                "fits with --offload model": [g for g in GPUS if gb[setting][largest] + RESERVE_GB <= g]}
    params = {name: {"quantised": q, "other": rest, "quantised by --quantize": quantised}
              for name, ((q, rest), quantised) in nets.items()}
    return {"parameters": params, "GB": gb, "models": table, "reserve_GB": RESERVE_GB}


def stored_bytes(module: torch.nn.Module) -> int:
    """Bytes the module's tensors occupy: plain tensors by their size; optimum-quanto's quantised weights by their
    int8 data and scales."""
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        inner = [getattr(tensor, a) for a in ("_data", "_scale") if isinstance(getattr(tensor, a, None), torch.Tensor)]
        for t in inner or [tensor]:
            total += t.numel() * t.element_size()
    return total


def measured_part(steps: int = 2, diffs: bool = True) -> dict:
    import invedit
    from invedit.backbones import backbone
    from invedit.testing import tiny_pipeline

    sys.path.insert(0, str(HERE.parent))
    from tests.conftest import scene_image

    methods = {"euler": "none", "direct": "none", "rf-solver": "none", "fireflow": "none", "uniedit": "none",
               "rf-inversion": "none", "none": "flowedit"}
    out = {}
    with tempfile.TemporaryDirectory() as root:
        for kind in ("sd3", "flux"):
            folder = Path(root) / kind
            tiny_pipeline(kind=kind).save_pretrained(folder)
            pipes = {q: invedit.load(str(folder), device="cpu", resolution=64, quantize=q) for q in (None, "int8")}
            components = backbone(pipes[None]).quantized_components() + ("vae",)
            memory = {c: {q or "float32": stored_bytes(getattr(p, c)) for q, p in pipes.items()} for c in components}
            differences, seconds = {}, {}
            for inversion, editor in methods.items():
                if not diffs or inversion == "rf-inversion" and kind != "flux":
                    continue
                finals = {}
                for q, pipe in pipes.items():
                    started = time.perf_counter()
                    finals[q] = invedit.edit(pipe, scene_image(), SOURCE, TARGET, inversion=inversion, editor=editor,
                                             steps=steps, guidance_scale=3.0).latents
                    seconds[f"{inversion}+{editor} {q or 'float32'}"] = time.perf_counter() - started
                differences[f"{inversion}+{editor}"] = (finals[None] - finals["int8"]).abs().max().item()
            out[kind] = {"stored bytes": memory, "max |int8 - float32| of the final latents": differences,
                         "seconds (CPU, loaded machine: indicative only)": seconds}
    return out


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# Quantised networks: memory of FLUX.1-dev and SD 3.5, and the tiny models measured", "",
             f"Machine: {results['machine']}; torch {results['torch']}. Written by "
             "`benchmarks/quantized_memory.py`. **No GPU was available**: the GPU figures below are arithmetic; "
             "`benchmarks/gpu_memory.py` measures them wherever a GPU is.", ""]
    if "arithmetic" in results:
        a = results["arithmetic"]
        lines += ["## Arithmetic: the real models (parameters from the published configs, on the meta device)", "",
                  "| network | quantised weights | other parameters | bf16 GB | int8 GB | nf4 GB |",
                  "|---|---|---|---|---|---|"]
        for name, p in a["parameters"].items():
            q = f"{p['quantised'] / 1e9:.2f} B" if p["quantised by --quantize"] else "— (not quantised)"
            other = p["other"] + (0 if p["quantised by --quantize"] else p["quantised"])
            lines.append(f"| {name} | {q} | {other / 1e9:.2f} B | " +
                         " | ".join(f"{a['GB'][s][name]:.1f}" for s in BYTES) + " |")
        lines += ["", "| model, weights | all weights | fits without offload (GB GPU) | `--offload model`: largest "
                  "network | fits with `--offload model` |", "|---|---|---|---|---|"]
        for name, row in a["models"].items():
            fits = ", ".join(map(str, row["fits without offload"])) or "none of 8–80"
            fits_offload = ", ".join(map(str, row["fits with --offload model"])) or "none of 8–80"
            lines.append(f"| {name} | {row['all GB']:.1f} GB | {fits} | {row['largest GB']:.1f} GB "
                         f"({row['largest network']}) | {fits_offload} |")
        lines += ["", f"\"Fits\" leaves {a['reserve_GB']:.0f} GB for activations at 1024² and the CUDA context (an "
                  "estimate, not a measurement). Quantised: the linear weights of the transformer and of T5 (T5's "
                  "`wo` projections, 1.0 B of its 4.76 B parameters, stay bf16: transformers keeps them out, as the "
                  "tiny run below shows for optimum-quanto); norms, embeddings, CLIP and the VAE stay bf16.", ""]
    if "measured" in results:
        lines += ["## Measured: the tiny models on this CPU (`invedit.load(..., quantize=\"int8\")`, float32 "
                  "otherwise)", "", "| model | network | float32 bytes | int8 bytes | ratio |", "|---|---|---|---|---|"]
        for kind, r in results["measured"].items():
            for component, m in r["stored bytes"].items():
                lines.append(f"| tiny {kind} | {component} | {m['float32']:,} | {m['int8']:,} | "
                             f"{m['int8'] / m['float32']:.2f} |")
        lines += ["", "The tiny networks are mostly norms and embeddings, so their ratio is far from the real "
                  "models' (int8 linear weights take a quarter of float32's bytes, plus a scale per row).", ""]
        rows = [(kind, method, d) for kind, r in results["measured"].items()
                for method, d in r["max |int8 - float32| of the final latents"].items()]
        if rows:
            lines += ["| model | inversion+editor | max \\|int8 − float32\\| of the final latents |", "|---|---|---|"]
            lines += [f"| tiny {kind} | {method} | {d:.2e} |" for kind, method, d in rows]
        lines += ["", "How far a quantised edit lands from the float32 one on each flow inversion is measured by "
                  "tests/test_quantize_lora.py (bound 2e-2; values in docs/test-bounds.md), which also checks that "
                  "Direct's source branch still ends on z*₀ bit for bit.", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="arithmetic,measured")
    parser.add_argument("--no-diffs", action="store_true", help="measured: bytes only, no edits")
    args = parser.parse_args()
    parts = args.parts.split(",")
    results = {"machine": f"{platform.machine()} {platform.processor() or ''} ({torch.get_num_threads()} threads)"
               .strip(), "torch": torch.__version__}
    if "arithmetic" in parts:
        results["arithmetic"] = arithmetic_part()
    if "measured" in parts:
        results["measured"] = measured_part(diffs=not args.no_diffs)
    (HERE / "quantized_memory.json").write_text(json.dumps(results, indent=2))
    write_markdown(results, HERE / "quantized_memory.md")
    print((HERE / "quantized_memory.md").read_text())


if __name__ == "__main__":
    main()
