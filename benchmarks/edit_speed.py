"""Time, NFE and peak memory per edit for each inversion + P2P and each editor, on small and full-size models.

    python benchmarks/edit_speed.py                       # tiny parity model (512 px) + SD-1.4-shaped model
    python benchmarks/edit_speed.py --models tiny,embedded --methods editors   # every editor × {ddim, direct}
    python benchmarks/edit_speed.py --models tiny --repeats 5
    python benchmarks/edit_speed.py --models sd14 --sd-steps 50 --device cuda --dtype float16   # on a GPU
    python benchmarks/edit_speed.py --models sd14 --sd-methods all --device cuda   # every inversion, full size
    python benchmarks/edit_speed.py --models sdxl --sd-steps 2          # SDXL-shaped UNet at 1024² (CPU: ~15 min)
    python benchmarks/edit_speed.py --models sd3,flux   # SD 3 / FLUX.1: runs benchmarks/flow_speed.py (NFE per
                                                        # flow method at its paper's step count, timing, memory)

Methods are run interleaved (A B C A B C …) and the median is reported, so background load hits all alike.
Results are merged into ``benchmarks/results.json`` (keyed by model and machine) and ``benchmarks/results.md``
is regenerated from it. Weights do not change speed, so the full-size model has random weights (no download).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import invedit
import invedit.backbones
import invedit.sampling
from invedit.api import decode_latents, encode_image
from invedit.editing.base import reference_editor_options
from invedit.images import psnr
from invedit.models import prepare_pipeline
from invedit.versions import versions

HERE = Path(__file__).parent
PARITY_MODEL = HERE.parent / "tests" / "fixtures" / "parity" / "model"
SOURCE, TARGET = "a yellow square on a striped background", "a yellow star on a striped background"

# name -> (inversion, inversion options, editor); the first three are the speed targets of the core issue.
CORE_METHODS: dict[str, tuple[str, dict, str]] = {
    "ddim+p2p": ("ddim", {}, "p2p"),
    "direct+p2p": ("direct", {}, "p2p"),
    "direct+p2p (reference layout)": ("direct", {"layout": "reference"}, "p2p"),
}


#: Every editor with DDIM and Direct Inversion, at its reference settings.
EDITOR_METHODS: dict[str, tuple[str, dict, str]] = {
    f"{inversion}+{editor}": (inversion, {}, editor)
    for editor in ("p2p", "masactrl", "pnp", "pix2pix-zero") for inversion in ("ddim", "direct")
}


def method_set(name: str) -> dict[str, tuple[str, dict, str]]:
    """``core``, ``editors`` or ``all`` (every inversion with P2P)."""
    if name == "core":
        return CORE_METHODS
    if name == "editors":
        return EDITOR_METHODS
    if name == "all":
        return all_methods()
    raise SystemExit(f"unknown method set {name!r}; choose core, editors or all")


def all_methods() -> dict[str, tuple[str, dict, str]]:
    """The core three plus every other registered inversion with P2P (StyleDiffusion with a tiny random image
    encoder: no download, and the encoder's one forward pass per inversion is negligible)."""
    import tempfile

    from invedit.inversion import INVERSIONS
    from invedit.testing import tiny_image_encoder

    methods = dict(CORE_METHODS)
    for name in sorted(INVERSIONS):
        if name not in ("ddim", "direct"):
            options = {"image_encoder": tiny_image_encoder(tempfile.mkdtemp())} if name == "style-diffusion" else {}
            methods[f"{name}+p2p"] = (name, options, "p2p")
    return methods


def sd14_shaped_pipeline(device: str, dtype: torch.dtype):
    """Stable Diffusion 1.4's architecture (UNet 860M, VAE, CLIP ViT-L text encoder) with random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from invedit.testing import TINY_VOCABULARY
    from invedit.word_tokenizer import build_word_tokenizer

    torch.manual_seed(0)
    tokenizer = build_word_tokenizer(TINY_VOCABULARY)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(dtype=dtype)
    pipe = prepare_pipeline(pipe, torch.device(device), name="sd14-shaped-random")
    return pipe


def sdxl_shaped_pipeline(device: str, dtype: torch.dtype):
    """SDXL base's architecture (UNet 2.6B, VAE, CLIP ViT-L + OpenCLIP bigG text encoders) with random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from invedit.testing import SDXL_BASE_UNET, TINY_VOCABULARY
    from invedit.word_tokenizer import build_word_tokenizer

    torch.manual_seed(0)
    tokenizer = build_word_tokenizer(TINY_VOCABULARY)
    unet = UNet2DConditionModel(**SDXL_BASE_UNET)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=1024, scaling_factor=0.13025, force_upcast=True)

    def text(width: int, layers: int, heads: int, projection: bool):
        config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                                num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                                projection_dim=1280, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text(768, 12, 12, False),
                                     text_encoder_2=text(1280, 32, 20, True), tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True)
    pipe.to(dtype=dtype)
    pipe = prepare_pipeline(pipe, torch.device(device), name="sdxl-shaped-random")
    return pipe


class PeakMemory:
    """Peak extra memory during a block: CUDA allocator peak, or sampled process RSS on the CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
        else:
            self.base, self.running = self._rss_mb(), True
            self.samples = [self.base]

            def sample():
                while self.running:
                    self.samples.append(self._rss_mb())
                    time.sleep(0.005)

            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20 - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak_mb = max(self.samples) - self.base


def run_once(pipe, case: tuple[Image.Image, str, str], steps: int, method: str, methods: dict) -> dict:
    inversion, options, editor = methods[method]
    image, source, target = case
    device = pipe.unet.device
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        result = invedit.edit(pipe, image, source, target, inversion=inversion, editor=editor, steps=steps,
                              inversion_options=options, **reference_editor_options(pipe, editor))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    round_trip = decode_latents(pipe, encode_image(pipe, result.source))[0]
    return {"seconds": seconds, "reconstruction_psnr": psnr(result.reconstruction, round_trip),
            "nfe": result.nfe, "nfe_inversion": result.nfe_inversion,
            "nfe_edit": result.nfe_edit, "nfe_backward": result.settings["nfe_backward"], "peak_mb": mem.peak_mb}


def random_case(pipe) -> tuple[Image.Image, str, str]:
    """A noise image and the parity prompts: enough for random-weight models, where only speed is measured."""
    size = invedit.models.native_resolution(pipe)
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)), SOURCE, TARGET


def shapes_case() -> tuple[Image.Image, str, str]:
    """A held-out shapes-world colour edit, so the embedded model's reconstruction PSNRs mean something."""
    from invedit.toy.scenes import make_edit_example

    edit = make_edit_example(0, "color")
    return Image.fromarray(edit.source_image), edit.source_prompt, edit.target_prompt


def benchmark(pipe, steps: int, repeats: int, methods: dict, case: tuple[Image.Image, str, str] | None = None) -> dict:
    """Median time, NFE and peak memory per method; methods interleaved within each repeat."""
    case = case or random_case(pipe)
    run_once(pipe, case, 1, "ddim+p2p", methods)  # warm-up
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for _ in range(repeats):
        for method in methods:
            runs[method].append(run_once(pipe, case, steps, method, methods))
            print(f"  {method}: {runs[method][-1]['seconds']:.2f} s", flush=True)
    rows = {}
    for method, rs in runs.items():
        rows[method] = {**rs[0], "seconds": statistics.median(r["seconds"] for r in rs),
                        "peak_mb": max(r["peak_mb"] for r in rs), "all_seconds": [r["seconds"] for r in rs]}
    base, ref = rows["ddim+p2p"]["seconds"], rows["direct+p2p"]["seconds"]
    for row in rows.values():
        row["vs_ddim"], row["vs_direct"] = row["seconds"] / base, row["seconds"] / ref
    return rows


def unit_costs(pipe, repeats: int = 2) -> dict[str, float]:
    """Seconds per UNet call at batch 1–4 (forward), per forward+backward row, and per VAE encode/decode."""
    unet = pipe.unet
    h = w = int(unet.config.sample_size)
    dim = int(unet.config.cross_attention_dim)
    dtype = unet.dtype
    out: dict[str, float] = {}

    def timed(fn) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    tokens = 78 if invedit.models.model_kind(pipe) == "sdxl" else 77  # SDXL: + the pooled-embedding token
    call = invedit.backbones.backbone(pipe).denoise
    stats = invedit.sampling.RunStats()
    with torch.no_grad():
        for b in (1, 2, 3, 4):
            x, e = torch.randn(b, 4, h, w, dtype=dtype), torch.randn(b, tokens, dim, dtype=dtype)
            out[f"unet_forward_batch{b}"] = timed(lambda x=x, e=e: call(x, 500, e, stats))
        image = Image.new("RGB", (invedit.models.native_resolution(pipe),) * 2, (120, 60, 30))
        out["vae_encode"] = timed(lambda: encode_image(pipe, image))
        z = torch.randn(2, 4, h, w)
        out["vae_decode_batch2"] = timed(lambda: decode_latents(pipe, z))
    e = torch.randn(1, tokens, dim, dtype=dtype, requires_grad=True)
    x = torch.randn(1, 4, h, w, dtype=dtype)
    out["unet_forward_backward_batch1"] = timed(lambda: call(x, 500, e, stats).sum().backward())
    return out


def extrapolate(short: dict, long: dict, steps_short: int, steps_long: int, steps: int) -> dict:
    """Time at ``steps`` from two measured step counts (fixed cost + per-step cost; P2P's windows scale)."""
    out = {}
    for method in short:
        per_step = (long[method]["seconds"] - short[method]["seconds"]) / (steps_long - steps_short)
        fixed = short[method]["seconds"] - per_step * steps_short
        out[method] = {"seconds": fixed + per_step * steps, "per_step": per_step, "fixed": fixed}
    return out


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# Edit speed: every inversion with Prompt-to-Prompt, every editor with DDIM and Direct Inversion", "",
             "Generated by `benchmarks/edit_speed.py` from `results.json`. Time = inversion + editing (VAE",
             "included), median of interleaved repeats. NFE = UNet sample evaluations, forward (inversion + edit)",
             "and backward (optimisation methods); peak = extra memory during the edit (CUDA allocator peak, or",
             "sampled process RSS on CPU); recon. PSNR = decoded source branch vs the VAE round trip of the input.",
             ""]
    for key, entry in results.items():
        lines += [f"## {key}", "",
                  f"{entry['description']}; {entry['steps']} steps, {entry['dtype']}, {entry['repeats']} repeat(s); "
                  f"{entry['date']}; versions {json.dumps(entry['versions'])}", "",
                  "| method | seconds | × ddim+p2p | × direct+p2p | NFE fwd (inv + edit) | NFE bwd | peak MB | "
                  "recon. PSNR dB |", "|---|---|---|---|---|---|---|---|"]
        for method, r in entry["rows"].items():
            lines.append(f"| {method} | {r['seconds']:.2f} | {r['vs_ddim']:.2f} | {r['vs_direct']:.2f} | "
                         f"{r['nfe']} ({r['nfe_inversion']} + {r['nfe_edit']}) | {r.get('nfe_backward', 0)} | "
                         f"{r['peak_mb']:.0f} | {r.get('reconstruction_psnr', float('nan')):.1f} |")
        if "extrapolated" in entry:
            ex = entry["extrapolated"]
            base = ex["ddim+p2p"]["seconds"]
            lines += ["", f"Measured at {entry['steps']} and {entry['steps_long']} steps, extrapolated to 50 steps "
                      "(fixed cost + per-step cost; P2P's injection windows scale with the step count):", "",
                      "| method | s per step | fixed s | 50 steps, s | × ddim+p2p |", "|---|---|---|---|---|"]
            for method, r in ex.items():
                lines.append(f"| {method} | {r['per_step']:.2f} | {r['fixed']:.2f} | {r['seconds']:.1f} | "
                             f"{r['seconds'] / base:.2f} |")
        if "projected" in entry:
            lines += ["", "Projected 50-step cost of every method on this model: NFE counts from the tiny model × "
                      "this model's measured unit costs (" + ", ".join(f"{k} {v:.2f} s" for k, v in
                                                                     entry["unit_costs"].items()) + "):", "",
                      "| method | projected s | × direct+p2p |", "|---|---|---|"]
            ref = entry["projected"]["direct+p2p"]
            for method, sec in entry["projected"].items():
                lines.append(f"| {method} | {sec:.0f} | {sec / ref:.1f} |")
        if "projected_sd14" in entry:
            lines += ["", "Projected 50-step cost on the SD-1.4-shaped model of this machine: these NFE counts × "
                      "its measured unit costs (the sd14 section):", "",
                      "| method | projected s | × direct+p2p |", "|---|---|---|"]
            ref = entry["projected_sd14"]["direct+p2p"]
            for method, sec in entry["projected_sd14"].items():
                lines.append(f"| {method} | {sec:.0f} | {sec / ref:.2f} |")
        lines.append("")
    path.write_text("\n".join(lines))


def project(nfe_rows: dict, costs: dict) -> dict[str, float]:
    """Seconds at 50 steps from NFE counts and unit costs (forward per row at batch 2, backward per row)."""
    forward = costs["unet_forward_batch2"] / 2
    backward = max(costs["unet_forward_backward_batch1"] - costs["unet_forward_batch1"], 0.0)
    fixed = costs["vae_encode"] + costs["vae_decode_batch2"]
    return {m: fixed + r["nfe"] * forward + r.get("nfe_backward", 0) * backward for m, r in nfe_rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,sd14",
                        help="comma list of: tiny, sd14, sdxl, embedded, sd3, flux (sd3/flux: flow_speed.py)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps for tiny/embedded models")
    parser.add_argument("--sd-steps", type=int, default=5, help="full-size model: measured at this and twice this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sd-repeats", type=int, default=1)
    parser.add_argument("--methods", default="all",
                        help="'core' (ddim, direct, reference layout), 'editors' (every editor × ddim/direct) or 'all'")
    parser.add_argument("--sd-methods", default="core", help="full-size model: as --methods ('all': hours on CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="full-size model dtype (default: bfloat16 on CPU)")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    methods = method_set(args.methods)
    names = args.models.split(",")
    flow = [n for n in names if n in ("sd3", "flux")]
    if flow:  # the rectified-flow families have their own script: NFE per edit, SD3.5-shaped timing, memory
        import subprocess
        import sys

        subprocess.run([sys.executable, str(HERE / "flow_speed.py")], check=True)
    for name in (n for n in names if n not in flow):
        chosen = args.sd_methods if name in ("sd14", "sdxl") else args.methods
        default = "core" if name in ("sd14", "sdxl") else "all"
        label = name if chosen == default else f"{name}, {chosen} methods"
        key = f"{label} on {machine(device)}"
        if name in ("tiny", "embedded"):
            folder = PARITY_MODEL if name == "tiny" else None
            pipe = invedit.load(folder, device=args.device, dtype="float32")
            desc = ("tiny SD-shaped model of the parity fixture, 512 px" if name == "tiny"
                    else "embedded shapes model, 64 px, a held-out shapes-world colour edit")
            rows = benchmark(pipe, args.steps, args.repeats, methods, None if name == "tiny" else shapes_case())
            entry = {"description": desc, "steps": args.steps, "repeats": args.repeats, "dtype": "float32",
                     "rows": rows}
            sd14 = next((v for k, v in results.items() if k.startswith("sd14 on") and "unit_costs" in v), None)
            if name == "tiny" and args.steps == 50 and sd14 is not None:  # NFE do not depend on the weights
                entry["projected_sd14"] = project(rows, sd14["unit_costs"])
        elif name in ("sd14", "sdxl"):
            dtype = args.dtype or ("float16" if device.type == "cuda" else "bfloat16")
            build = sd14_shaped_pipeline if name == "sd14" else sdxl_shaped_pipeline
            pipe = build(args.device, invedit.models.DTYPES[dtype])
            sd_methods = method_set(args.sd_methods)
            short = benchmark(pipe, args.sd_steps, args.sd_repeats, sd_methods)
            long = benchmark(pipe, 2 * args.sd_steps, args.sd_repeats, sd_methods)
            description = ("SD-1.4-shaped model (random weights), 512 px" if name == "sd14" else
                           "SDXL-base-shaped model (random weights; UNet 2.6B, two text encoders), 1024 px")
            entry = {"description": description, "steps": args.sd_steps,
                     "steps_long": 2 * args.sd_steps, "repeats": args.sd_repeats, "dtype": dtype, "rows": short,
                     "rows_long": long, "extrapolated": extrapolate(short, long, args.sd_steps, 2 * args.sd_steps, 50)}
            tiny = next((v for k, v in results.items() if k.startswith("tiny on")), None)
            if tiny is not None:
                costs = unit_costs(pipe)
                entry["unit_costs"] = costs
                entry["projected"] = project(tiny["rows"], costs)
        else:
            raise SystemExit(f"unknown model {name!r}")
        entry.update(date=time.strftime("%Y-%m-%d"), versions=versions())
        results[key] = entry
        args.out.write_text(json.dumps(results, indent=2))
        write_markdown(results, args.out.with_suffix(".md"))
        for method, r in entry["rows"].items():
            print(f"{key:40s} {method:32s} {r['seconds']:8.2f} s  x{r['vs_ddim']:.2f} ddim  "
                  f"x{r['vs_direct']:.2f} direct  NFE {r['nfe']} bwd {r.get('nfe_backward', 0)}  "
                  f"peak {r['peak_mb']:.0f} MB", flush=True)
        del pipe


if __name__ == "__main__":
    main()
