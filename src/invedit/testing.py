"""Tiny Stable-Diffusion-shaped pipelines built offline, for tests (ours and yours).

`tiny_pipeline` returns a real `diffusers.StableDiffusionPipeline` (UNet with cross-attention, AutoencoderKL,
CLIP text encoder, CLIP-format tokenizer, DDIM scheduler) with random weights and a small word vocabulary,
built without any download in well under a second. Code that works on it works on a real checkpoint.
"""

from __future__ import annotations

import tempfile

import torch

TINY_VOCABULARY = (
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "picture", "image", "painting", "drawing",
    "red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "grey", "brown", "pink",
    "circle", "square", "triangle", "star", "shape", "object", "dog", "cat", "bird", "car", "tree", "house",
    "flower", "cake", "apple", "background", "striped", "dotted", "checkered", "plain", "big", "small",
    "large", "sitting", "standing",
)


#: The UNet of SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0), as `UNet2DConditionModel` arguments:
#: for full-size benchmarks with random weights and for checking layer choices on the real shapes.
SDXL_BASE_UNET: dict = dict(
    sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)


def tiny_pipeline(seed: int = 0, resolution: int = 64, device: str | torch.device = "cpu",
                  cross_attention_dim: int = 32, kind: str = "sd"):
    """A tiny random-weight `StableDiffusionPipeline` (4× VAE, latent ``resolution // 4``) built offline.

    Args:
        seed: seed of every random weight (same seed → same pipeline, bit for bit).
        resolution: image side in pixels (a multiple of 16); the latent is ``resolution // 4`` wide.
        device: where to put it.
        cross_attention_dim: text embedding width (per text encoder).
        kind: ``"sd"``, or ``"sdxl"`` for an SDXL-shaped `StableDiffusionXLPipeline`: two text encoders (the
            second with a projection: the pooled embedding), size conditioning, no attention in the first
            block, two transformer layers in the last; ``"sd3"`` for a `StableDiffusion3Pipeline` and ``"flux"``
            (guidance embedded, like FLUX.1-dev) or ``"flux-schnell"`` (no guidance input) for a `FluxPipeline`:
            rectified-flow transformers with CLIP and T5 text encoders (see `tiny_flow_pipeline`).
    Returns:
        A pipeline prepared as `invedit.load` prepares real checkpoints (DDIM scheduler of reference-settings §1;
        the flow models keep their `FlowMatchEulerDiscreteScheduler`).
    """
    if kind == "sdxl":
        return _tiny_sdxl_pipeline(seed, resolution, device, cross_attention_dim)
    if kind in FLOW_KINDS:
        return tiny_flow_pipeline(kind, seed, resolution, device, cross_attention_dim)
    if kind != "sd":
        raise ValueError(f"kind must be one of 'sd', 'sdxl', {', '.join(map(repr, FLOW_KINDS))}; got {kind!r}")
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .models import prepare_pipeline
    from .word_tokenizer import build_word_tokenizer

    if resolution % 16:
        raise ValueError("resolution must be a multiple of 16")
    with tempfile.TemporaryDirectory(prefix="invedit-tiny-tok-") as folder:  # the tokenizer reads it eagerly
        tokenizer = build_word_tokenizer(TINY_VOCABULARY, folder)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel(
            sample_size=resolution // 4, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), norm_num_groups=8, attention_head_dim=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=cross_attention_dim,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            layers_per_block=1, norm_num_groups=8, sample_size=resolution, scaling_factor=4.0,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=cross_attention_dim, intermediate_size=2 * cross_attention_dim,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
        # Random text embeddings are nearly identical across words; spread them so that prompts differ and
        # cross-attention maps are not uniform (as in the parity fixture's tiny model).
        with torch.no_grad():
            text_encoder.get_input_embeddings().weight.mul_(25.0)
    finally:
        torch.random.set_rng_state(generator_state)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe = prepare_pipeline(pipe, torch.device(device), name=f"tiny-{seed}-{resolution}")
    return pipe


def _tiny_text_encoder(tokenizer, width: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, projection_dim=width)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    with torch.no_grad():  # spread the random word embeddings (see tiny_pipeline)
        model.get_input_embeddings().weight.mul_(25.0)
    return model


def _tiny_sdxl_pipeline(seed: int, resolution: int, device, width: int):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from .models import prepare_pipeline
    from .word_tokenizer import build_word_tokenizer

    if resolution % 32:
        raise ValueError("an SDXL-shaped tiny pipeline needs a resolution that is a multiple of 32")
    with tempfile.TemporaryDirectory(prefix="invedit-tiny-tok-") as folder:
        tokenizer = build_word_tokenizer(TINY_VOCABULARY, folder)
    with tempfile.TemporaryDirectory(prefix="invedit-tiny-tok-") as folder:
        tokenizer_2 = build_word_tokenizer(TINY_VOCABULARY, folder)
    time_dim = 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=resolution // 4, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(16, 32, 32), norm_num_groups=8, attention_head_dim=(2, 2, 4),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2), cross_attention_dim=2 * width, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=6 * time_dim + width,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            layers_per_block=1, norm_num_groups=8, sample_size=resolution, scaling_factor=4.0,
        )
        text_encoder = _tiny_text_encoder(tokenizer, width, projection=False)
        text_encoder_2 = _tiny_text_encoder(tokenizer_2, width, projection=True)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True)
    pipe = prepare_pipeline(pipe, torch.device(device), name=f"tiny-sdxl-{seed}-{resolution}")
    return pipe


def tiny_image_encoder(folder, hidden: int = 32, seed: int = 0) -> str:
    """A random `transformers.CLIPVisionModel` (32 px, patch 16: 5 tokens) saved to ``folder``, offline.

    StyleDiffusion's image encoder for tests and benchmarks (weights do not change its cost). Returns the folder.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=16, hidden_size=hidden,
                                                 intermediate_size=2 * hidden, num_hidden_layers=1,
                                                 num_attention_heads=2))
    model.save_pretrained(folder)
    return str(folder)


def tiny_dino(folder=None, seed: int = 0):
    """A random `transformers.ViTModel` (patch 16, 24 wide, 2 blocks) standing in for DINO ViT-B/8, offline;
    saved to ``folder`` when given (then the folder is returned, else the model)."""
    from transformers import ViTConfig, ViTModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTModel(ViTConfig(image_size=32, patch_size=16, hidden_size=24, num_hidden_layers=2,
                                   num_attention_heads=3, intermediate_size=48), add_pooling_layer=False).eval()
    if folder is None:
        return model
    model.save_pretrained(folder)
    return str(folder)


def tiny_clip(folder=None, seed: int = 0):
    """A random `transformers.CLIPModel` with its `CLIPProcessor` (word tokenizer of `TINY_VOCABULARY`, 32 px
    images), offline: ``(model, processor)``, or saved together to ``folder`` (then the folder is returned)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from .word_tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(TINY_VOCABULARY)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=32, patch_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    if folder is None:
        return model, processor
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def random_lpips_backbone(path, seed: int = 0) -> str:
    """A random-weight torchvision SqueezeNet 1.1 state dict saved at ``path`` (what ``--lpips-weights`` takes;
    the real one is torchvision's ``squeezenet1_1-b8a52dc0.pth``). Returns the path."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.squeezenet1_1(weights=None)
    torch.save(model.state_dict(), path)
    return str(path)


# ---- tiny rectified-flow pipelines (SD3, FLUX) ---------------------------------------------------------------
#: `tiny_pipeline` kinds built by `tiny_flow_pipeline`.
FLOW_KINDS = ("sd3", "flux", "flux-schnell")


def tiny_t5_tokenizer(words=TINY_VOCABULARY, model_max_length: int = 512):
    """A `transformers.T5Tokenizer` (Unigram) in which each of ``words`` is one piece, built offline.

    Pieces: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, the word-start marker, the letters (so unknown words still
    tokenize), then one piece per word scored above any split into letters. No sentinel tokens.
    """
    from transformers import T5Tokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -10.0) for c in letters] + [("\u2581" + c, -10.0) for c in letters]
    vocab += [("\u2581" + w, -1.0) for w in words if len(w) > 1]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
    for w in words:
        ids = tokenizer(w).input_ids
        if len(ids) != 2:
            raise RuntimeError(f"T5 tokenizer check failed: {w!r} -> {ids}")
    return tokenizer


def _tiny_t5(tokenizer, width: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, relative_attention_max_distance=32,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0))


def _tiny_flow_vae(resolution: int, shift_factor: float, scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=8, sample_size=resolution, shift_factor=shift_factor,
        scaling_factor=scaling_factor, use_quant_conv=False, use_post_quant_conv=False)


def tiny_flow_pipeline(kind: str = "sd3", seed: int = 0, resolution: int = 64, device: str | torch.device = "cpu",
                       width: int = 32, words: tuple[str, ...] = TINY_VOCABULARY):
    """A tiny random-weight `StableDiffusion3Pipeline` (``kind="sd3"``) or `FluxPipeline` (``"flux"``: guidance
    embedded like FLUX.1-dev; ``"flux-schnell"``: none), built offline in about a second.

    Both have a 4× VAE with 4 latent channels (latent ``resolution // 4``, so 64 px give 64 image tokens after
    SD3's 2×2 patches or FLUX's 2×2 packing), word-level CLIP tokenizers and a word-level T5 tokenizer over
    `TINY_VOCABULARY`, and the real checkpoints' `FlowMatchEulerDiscreteScheduler` configurations (SD3-medium:
    static shift 3; FLUX.1: dynamic shift). SD3: two CLIP encoders with projection (``width`` each; pooled
    2·width), T5 ``3·width`` wide so that the CLIP states are zero-padded as on the real model. FLUX: CLIP
    (pooled ``width``) and T5 ``width`` wide.

    Args:
        kind: ``"sd3"``, ``"flux"`` or ``"flux-schnell"``.
        seed: seed of every random weight (same seed → same pipeline, bit for bit).
        resolution: image side in pixels (a multiple of 16).
        device: where to put it.
        width: text-encoder width.
        words: the tokenizers' whole words (`TINY_VOCABULARY`; other words change the text encoders' weights).
    Returns:
        The diffusers pipeline, in eval mode, gradients off, progress bar off, its `invedit.backbones` record
        attached (working at ``resolution``).
    Raises:
        InveditError: library versions below those the flow families are tested with.
    """
    from .backbones.mmdit import FlowTransformerBackbone

    FlowTransformerBackbone.check_requirements()
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    from .word_tokenizer import build_word_tokenizer

    if kind not in FLOW_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, FLOW_KINDS))}; got {kind!r}")
    if resolution % 16:
        raise ValueError("resolution must be a multiple of 16")
    with tempfile.TemporaryDirectory(prefix="invedit-tiny-tok-") as folder:
        tokenizer = build_word_tokenizer(words, folder)
    with tempfile.TemporaryDirectory(prefix="invedit-tiny-tok-") as folder:
        tokenizer_2 = build_word_tokenizer(words, folder)
    t5_tokenizer = tiny_t5_tokenizer(words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "sd3":
            transformer = SD3Transformer2DModel(
                sample_size=resolution // 4, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=3 * width,
                pooled_projection_dim=2 * width, pos_embed_max_size=96)
            vae = _tiny_flow_vae(resolution, shift_factor=0.0609, scaling_factor=1.5035)
            text_encoder = _tiny_text_encoder(tokenizer, width, projection=True)
            text_encoder_2 = _tiny_text_encoder(tokenizer_2, width, projection=True)
            text_encoder_3 = _tiny_t5(t5_tokenizer, 3 * width)
        else:
            transformer = FluxTransformer2DModel(
                patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=width, pooled_projection_dim=width,
                guidance_embeds=kind == "flux", axes_dims_rope=[4, 4, 8])
            vae = _tiny_flow_vae(resolution, shift_factor=0.1159, scaling_factor=0.3611)
            text_encoder = _tiny_text_encoder(tokenizer, width, projection=False)
            text_encoder_2 = _tiny_t5(t5_tokenizer, width)
    if kind == "sd3":
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
            tokenizer_3=t5_tokenizer)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=1.0 if kind == "flux-schnell" else 3.0,
            use_dynamic_shifting=kind == "flux", base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096)
        pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                            text_encoder_2=text_encoder_2, tokenizer_2=t5_tokenizer, transformer=transformer)
    from .models import prepare_pipeline

    return prepare_pipeline(pipe, torch.device(device), resolution=resolution, name=f"tiny-{kind}-{seed}-{resolution}")


def tiny_lora(pipe, path, rank: int = 4, seed: int = 0, std: float = 0.5,
              layers: tuple[str, ...] = ("to_q", "to_k", "to_v")) -> str:
    """A random LoRA on the attention projections (``layers``) of ``pipe``'s denoiser, saved at ``path`` (a folder)
    in diffusers' LoRA format by the pipeline class's own ``save_lora_weights``; returns the file's path.

    A (rank × in) and B (out × rank) are Gaussian with standard deviation ``std`` (B is not zero, as it is when a
    LoRA starts training, so the adapter changes every output it touches). Same seed → same file, bit for bit.
    """
    from pathlib import Path

    from .backbones import backbone

    model = backbone(pipe)
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, module in model.denoiser.named_modules():
        if name.rpartition(".")[2] in layers and isinstance(module, torch.nn.Linear):
            weights[f"{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator) * std
            weights[f"{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * std
    Path(path).mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(str(path), **{f"{model.denoiser_name}_lora_layers": weights})
    return str(Path(path) / "pytorch_lora_weights.safetensors")


# ---- tiny instruction-trained pipelines (FLUX.1 Kontext, Qwen-Image-Edit) -------------------------------------
#: `tiny_instruction_pipeline` kinds.
INSTRUCTION_KINDS = ("flux-kontext", "qwen-image-edit")
#: Words of editing instructions (the shapes world's, `invedit.toy.bench.instruction`) beside `TINY_VOCABULARY`.
INSTRUCTION_WORDS = ("change", "color", "to", "turn", "into", "add", "remove", "make", "it")
#: The special tokens of Qwen2.5-VL's tokenizer that QwenImageEditPipeline's prompt template and the processor use.
QWEN_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                       "<|image_pad|>", "<|video_pad|>")


def tiny_qwen_tokenizer():
    """A byte-level `transformers.Qwen2Tokenizer` built offline: ``<|endoftext|>``, the 256 byte symbols, one merge
    chain per word of `TINY_VOCABULARY` and `INSTRUCTION_WORDS` (so each is one token after its leading space) and
    Qwen2.5-VL's special tokens (`QWEN_SPECIAL_TOKENS`). Any text tokenizes (unknown words into bytes), as with the
    real tokenizer."""
    from transformers import Qwen2Tokenizer

    from .word_tokenizer import _byte_alphabet

    vocab = {"<|endoftext|>": 0}
    for symbol in _byte_alphabet():
        vocab[symbol] = len(vocab)
    merges = []
    space = _byte_alphabet()[32]  # GPT-2's printable stand-in for the space byte
    for word in TINY_VOCABULARY + INSTRUCTION_WORDS:
        piece = space
        for char in word:
            merges.append((piece, char))
            piece += char
            vocab.setdefault(piece, len(vocab))
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), unk_token=None)
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    return tokenizer


def tiny_instruction_pipeline(kind: str = "flux-kontext", seed: int = 0, resolution: int = 64,
                              device: str | torch.device = "cpu"):
    """A tiny random-weight instruction-trained pipeline built offline.

    ``"flux-kontext"``: a `FluxKontextPipeline` over the networks of ``tiny_flow_pipeline("flux")`` (FLUX.1
    Kontext's transformer is FLUX.1's; guidance embedded), its word-level tokenizers knowing `INSTRUCTION_WORDS`
    too. ``"qwen-image-edit"``: a `QwenImageEditPipeline` with a
    tiny `QwenImageTransformer2DModel`, a tiny `AutoencoderKLQwenImage` (4 latent channels, 8× spatial like the
    real one), a tiny random `Qwen2_5_VLForConditionalGeneration` (2 text and 2 vision layers, 16 wide) with
    `tiny_qwen_tokenizer` and a `Qwen2VLProcessor` that reads the image at 56×56 to 112×112 pixels (the real one
    up to 3584×3584), and a `FlowMatchEulerDiscreteScheduler` with a dynamic exponential shift. Sizes follow
    diffusers' own tests of these pipelines. That pipeline conditions on the image at about one megapixel whatever
    the output size (`invedit.backbones.instruct`): a tiny edit takes some 20 s on a CPU, nearly all of it the VAE
    encoding that megapixel.

    Returns:
        The pipeline, prepared as `invedit.load` prepares real checkpoints (working at ``resolution``).
    Raises:
        InveditError: library versions below those the instruction families are tested with.
    """
    from .backbones.instruct import InstructionBackbone
    from .models import prepare_pipeline

    InstructionBackbone.check_requirements()
    if kind not in INSTRUCTION_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, INSTRUCTION_KINDS))}; got {kind!r}")
    if kind == "flux-kontext":
        from diffusers import FluxKontextPipeline

        flux = tiny_flow_pipeline("flux", seed, resolution, "cpu", words=TINY_VOCABULARY + INSTRUCTION_WORDS)
        pipe = FluxKontextPipeline(**{k: v for k, v in flux.components.items()})
    else:
        pipe = _tiny_qwen_image_edit(seed, resolution)
    return prepare_pipeline(pipe, torch.device(device), resolution=resolution, name=f"tiny-{kind}-{seed}-{resolution}")


def _tiny_qwen_image_edit(seed: int, resolution: int):
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    if resolution % 16:
        raise ValueError("resolution must be a multiple of 16")
    tokenizer = tiny_qwen_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
        ("vision_token_id", "<|vision_pad|>"), ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"))}
    z_dim = 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=4 * z_dim, out_channels=z_dim, num_layers=2, attention_head_dim=16,
            num_attention_heads=3, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4))
        vae = AutoencoderKLQwenImage(base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                     temperal_downsample=[False, True, True], latents_mean=[0.0] * z_dim,
                                     latents_std=[1.0] * z_dim)
        config = Qwen2_5_VLConfig(
            text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": len(tokenizer),
                         "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                         "rope_theta": 1000000.0, "bos_token_id": None, "eos_token_id": 0, "pad_token_id": 0},
            vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                           "out_hidden_size": 16},
            hidden_size=16, vocab_size=len(tokenizer), **ids)
        text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
                                 tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor())
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0,
        shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True)
    return QwenImageEditPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                 processor=processor, transformer=transformer)
