"""Command-line options several commands share (typer ``Annotated`` types), written once."""

from __future__ import annotations

from typing import Annotated

import typer

ModelOption = Annotated[str | None, typer.Option(help="hub id or diffusers folder; default: embedded model")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N, mps (default: best)")]
DtypeOption = Annotated[str | None, typer.Option(help="float32, float16 or bfloat16")]
ResolutionOption = Annotated[int | None, typer.Option(
    help="image side in px (default: the model's: 512 SD 1.x, 1024 SDXL/SD3/FLUX; a multiple of VAE factor × 8, "
         "× 2 on SD3/FLUX)")]
OffloadOption = Annotated[str | None, typer.Option(
    help="model or sequential: networks kept in CPU memory, each moved to the GPU to run (CUDA)")]
QuantizeOption = Annotated[str | None, typer.Option(
    help="quantise the denoiser and the T5 encoder as they load: int8 (optimum-quanto; CPU or CUDA), nf4 or "
         "bnb-int8 (bitsandbytes; CUDA)")]
LoraOption = Annotated[list[str] | None, typer.Option(
    "--lora", help="LoRA PATH_OR_ID[:SCALE] (.safetensors file, folder or hub id; scale 1 by default); repeatable")]
