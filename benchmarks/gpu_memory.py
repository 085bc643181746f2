"""Peak GPU memory and seconds per edit under each memory setting: no offload, ``--offload model``,
``--offload sequential``, ``--quantize int8`` / ``nf4`` (and nf4 with model offload), on the tiny SD3 / FLUX models
and on real-size random-weight FLUX.1-dev / SD 3.5 medium pipelines (random weights give real timings and memory
without a download). Runs wherever a GPU is; nothing here was run on a GPU when it was written (none was lent).

    python benchmarks/gpu_memory.py                                  # tiny + real size, every setting (CUDA)
    python benchmarks/gpu_memory.py --sizes tiny                     # seconds
    python benchmarks/gpu_memory.py --sizes real --models flux --settings none,int8,nf4 --steps 8
    python benchmarks/gpu_memory.py --blocks 2 --resolution 512      # a quick check: 2 transformer blocks, 2 T5 layers
    python benchmarks/gpu_memory.py --device cpu --sizes tiny --settings none,int8   # checks the script itself

Each setting loads the model folder through `invedit.load` (so the measured path is the user's), runs one
``direct+none`` edit (``--steps``, guidance 3.5, at ``--resolution``), and records the load and edit seconds, the
edit's NFE and ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` over load + edit. The real-size
folders (FLUX.1-dev: 34 GB in bf16; SD 3.5 medium: 16 GB) are written once under ``--scratch`` (default: a temporary
folder, removed at the end) from random weights (normal, std 0.02) built on the meta device and filled in place;
their tokenizers are invedit's small word tokenizers (`invedit.testing`), which change no cost. Settings a device
cannot run (offload or bitsandbytes on a CPU; a library not installed) are skipped with the reason invedit gives.
Results: ``benchmarks/gpu_memory.json`` and ``benchmarks/gpu_memory.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from flow_speed import CLIP_G, CLIP_L, FLUX_DEV, SD35_MEDIUM, T5_XXL, VAE_16CH  # noqa: E402

SOURCE, TARGET = "a red square on a striped background", "a blue star on a striped background"
#: setting name → `invedit.load` arguments.
SETTINGS = {"none": {}, "model": {"offload": "model"}, "sequential": {"offload": "sequential"},
            "int8": {"quantize": "int8"}, "nf4": {"quantize": "nf4"},
            "nf4+model": {"quantize": "nf4", "offload": "model"}}


def _random_(module: torch.nn.Module, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """Give a meta-device module real storage in ``dtype`` and fill it with N(0, 0.02) (norm scales with 1)."""
    module = module.to_empty(device="cpu").to(dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and ("norm" in name or name.endswith("scale")):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32).mul_(0.02).to(dtype))
        for b in module.buffers():
            if b.is_floating_point():
                b.zero_()
    if hasattr(module, "tie_weights"):  # T5: the embedding is shared (to_empty gave each name its own storage)
        module.tie_weights()
    return module


def real_size_pipeline(kind: str, blocks: int | None, dtype: torch.dtype = torch.bfloat16):
    """A FLUX.1-dev (``kind="flux"``) or SD 3.5 medium (``"sd3"``) pipeline of the published shapes with random
    weights (``blocks``: fewer transformer blocks and T5 layers, for a quick check)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from invedit.testing import TINY_VOCABULARY, tiny_t5_tokenizer
    from invedit.word_tokenizer import build_word_tokenizer

    t5 = dict(T5_XXL, num_layers=blocks or T5_XXL["num_layers"])
    with torch.device("meta"):
        if kind == "flux":
            config = dict(FLUX_DEV, num_layers=blocks or FLUX_DEV["num_layers"],
                          num_single_layers=2 * blocks if blocks else FLUX_DEV["num_single_layers"])
            transformer = FluxTransformer2DModel(**config)
            vae = AutoencoderKL(**VAE_16CH, shift_factor=0.1159, scaling_factor=0.3611)
            text = [CLIPTextModel(CLIPTextConfig(**CLIP_L))]
        else:
            config = dict(SD35_MEDIUM, num_layers=blocks or SD35_MEDIUM["num_layers"],
                          dual_attention_layers=tuple(range(min(13, blocks or 13))))
            transformer = SD3Transformer2DModel(**config)
            vae = AutoencoderKL(**VAE_16CH, shift_factor=0.0609, scaling_factor=1.5035)
            text = [CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L)),
                    CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G))]
        encoder_t5 = T5EncoderModel(T5Config(**t5))
    transformer, vae, encoder_t5 = (_random_(m, dtype, i) for i, m in enumerate((transformer, vae, encoder_t5)))
    text = [_random_(m, dtype, 10 + i) for i, m in enumerate(text)]
    with tempfile.TemporaryDirectory() as folder:
        clip_tokenizer = build_word_tokenizer(TINY_VOCABULARY, folder)
    if kind == "flux":
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                    base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                    max_image_seq_len=4096)
        return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text[0], tokenizer=clip_tokenizer,
                            text_encoder_2=encoder_t5, tokenizer_2=tiny_t5_tokenizer(), transformer=transformer)
    with tempfile.TemporaryDirectory() as folder:
        clip_tokenizer_2 = build_word_tokenizer(TINY_VOCABULARY, folder)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae, text_encoder=text[0], tokenizer=clip_tokenizer, text_encoder_2=text[1], tokenizer_2=clip_tokenizer_2,
        text_encoder_3=encoder_t5, tokenizer_3=tiny_t5_tokenizer())


def measure(folder: Path, setting: str, device: str, resolution: int, steps: int) -> dict:
    """Load ``folder`` under ``setting`` and run one direct+none edit: seconds, NFE and peak GPU memory."""
    import invedit
    from invedit.errors import InveditError

    sys.path.insert(0, str(HERE.parent))
    from tests.conftest import scene_image

    cuda = device.startswith("cuda")
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    dtype = "bfloat16" if cuda else "float32"
    try:
        pipe = invedit.load(str(folder), device=device, dtype=dtype, resolution=resolution, **SETTINGS[setting])
    except InveditError as exc:
        return {"skipped": str(exc)}
    loaded = time.perf_counter() - started
    image = scene_image(resolution)
    started = time.perf_counter()
    result = invedit.edit(pipe, image, SOURCE, TARGET, inversion="direct", editor="none", steps=steps,
                          guidance_scale=3.5)
    if cuda:
        torch.cuda.synchronize()
    row = {"load s": loaded, "edit s": time.perf_counter() - started, "nfe": result.nfe, "dtype": dtype,
           "finite": bool(torch.isfinite(result.latents).all())}
    if cuda:
        row["peak allocated GB"] = torch.cuda.max_memory_allocated() / 1e9
        row["peak reserved GB"] = torch.cuda.max_memory_reserved() / 1e9
    del pipe, result
    return row


def write_markdown(results: dict, path: Path) -> None:
    blocks = f"; {results['blocks']} blocks" if results["blocks"] else ""
    lines = ["# Peak GPU memory and seconds per edit under each memory setting", "",
             f"Device: {results['device']}; torch {results['torch']}; {results['steps']} steps, direct+none, "
             f"{results['resolution']}² (tiny: 64²){blocks}. Written by `benchmarks/gpu_memory.py`.", "",
             "| model | setting | peak allocated GB | peak reserved GB | load s | edit s | NFE |",
             "|---|---|---|---|---|---|---|"]
    for model, rows in results["runs"].items():
        for setting, row in rows.items():
            if "skipped" in row:
                lines.append(f"| {model} | {setting} | skipped: {row['skipped']} | | | | |")
                continue
            gb = [f"{row[k]:.2f}" if k in row else "n/a (CPU)" for k in ("peak allocated GB", "peak reserved GB")]
            lines.append(f"| {model} | {setting} | {gb[0]} | {gb[1]} | {row['load s']:.1f} | {row['edit s']:.1f} | "
                         f"{row['nfe']} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,real", help="tiny, real or both")
    parser.add_argument("--models", default="flux,sd3", help="flux (FLUX.1-dev), sd3 (SD 3.5 medium)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=", ".join(SETTINGS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--resolution", type=int, default=1024, help="image side of the real-size runs")
    parser.add_argument("--blocks", type=int, default=None, help="transformer blocks / T5 layers (default: all)")
    parser.add_argument("--scratch", type=Path, default=None, help="where the real-size folders are written")
    args = parser.parse_args()
    from invedit.testing import tiny_pipeline

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; pass --device cpu to check the script on the tiny models")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="invedit-gpu-memory-"))
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    results = {"device": device_name, "torch": torch.__version__, "steps": args.steps,
               "resolution": args.resolution, "blocks": args.blocks, "runs": {}}
    try:
        for size in args.sizes.split(","):
            for kind in args.models.split(","):
                folder = scratch / f"{size}-{kind}"
                if not (folder / "model_index.json").exists():
                    pipe = tiny_pipeline(kind=kind) if size == "tiny" else real_size_pipeline(kind, args.blocks)
                    pipe.save_pretrained(folder)
                    del pipe
                name = f"{size} {'FLUX.1-dev' if kind == 'flux' else 'SD 3.5 medium'}"
                resolution = 64 if size == "tiny" else args.resolution
                results["runs"][name] = {}
                for setting in args.settings.split(","):
                    row = measure(folder, setting, args.device, resolution, args.steps)
                    results["runs"][name][setting] = row
                    print(name, setting, json.dumps(row), flush=True)
                if args.scratch is None and size == "real":
                    shutil.rmtree(folder)  # 16–34 GB each
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    (HERE / "gpu_memory.json").write_text(json.dumps(results, indent=2))
    write_markdown(results, HERE / "gpu_memory.md")
    print((HERE / "gpu_memory.md").read_text())


if __name__ == "__main__":
    main()
