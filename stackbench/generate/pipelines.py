"""Stable Diffusion pipelines: loading a real checkpoint with clear errors, and random ones built offline.

Random pipelines are for tests (`tiny`: seconds on a CPU) and for timing (`sd15`: the SD-1.5 shapes, 860M-parameter
UNet; the
cost of a forward does not depend on the weight values). Nothing is downloaded: the tokenizer is a small
byte-level BPE written to disk, loaded through `CLIPTokenizer.from_pretrained` like a real one.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ..errors import StackbenchError, first_line
from ..refs import checkpoint_ref


def resolve_checkpoint(ref: str, revision: str | None = None) -> tuple[Path, str | None]:
    """A local folder as it is (revision None), or a Hub id downloaded with huggingface_hub into its cache
    (revision: the commit the snapshot holds)."""
    local = Path(ref)
    if checkpoint_ref(ref).scheme == "path":
        if not local.is_dir():
            raise StackbenchError(f"--model {ref}: no such folder; give a Stable Diffusion folder "
                                  "(save_pretrained layout with model_index.json) or a Hub id")
        if not (local / "model_index.json").is_file():
            raise StackbenchError(f"--model {ref}: not a diffusers pipeline folder (no model_index.json); save one "
                                  "with StableDiffusionPipeline.save_pretrained")
        return local, None
    from ..hub.fetch import snapshot

    # README.md: the checkpoint's card, whose licence the dataset card repeats
    return snapshot(f"--model {ref}", ref, revision,
                    allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model", "README.md"],
                    ignore_patterns=["*.fp16.*", "*non_ema*", "*.ckpt"])


def load_pipeline(ref: str, device: str | torch.device = "cpu", revision: str | None = None):
    """Any SD 1.x/2.x checkpoint loadable by StableDiffusionPipeline.from_pretrained (Hub id or folder).
    fp16 on CUDA, float32 on CPU; SDPA attention is diffusers' default on torch 2."""
    from diffusers import StableDiffusionPipeline

    device = torch.device(device)
    folder, _ = resolve_checkpoint(ref, revision)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=dtype,
                                                       safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise StackbenchError(f"--model {ref}: cannot load it as a StableDiffusionPipeline "
                              f"({first_line(e)}); give an SD 1.x/2.x checkpoint") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


CONFIGS = {
    "tiny": dict(
        unet=dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=32, cross_attention_dim=32,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=32),
        vae=dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32),
        text=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
    ),
    "sd15": dict(
        unet=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=64,
                  cross_attention_dim=768, attention_head_dim=8,
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
        text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                  hidden_act="quick_gelu"),
    ),
}


def write_tokenizer(folder: str | Path, words: tuple[str, ...] = ("the", "dog", "cat", "photo", "grass")) -> Path:
    """A byte-level BPE vocabulary (every byte, alone and word-final), merges that spell `words`, then the
    two special tokens last, as CLIP's vocabulary has them."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges = []
    for word in words:  # left-to-right merges: "d o" -> "do", "do g</w>" -> "dog</w>"
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            if pieces[0] not in vocab:
                vocab.append(pieces[0])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return folder


def random_pipeline(size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A StableDiffusionPipeline with random weights and the named shapes."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    cfg = CONFIGS[size]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(tmp))
    tokenizer.model_max_length = 77
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **cfg["unet"])
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **cfg["vae"])
        n = len(tokenizer)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=n, bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1,
                                            max_position_embeddings=77, **cfg["text"]))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=dtype)


def save_random_clip(folder: str | Path, seed: int = 0) -> Path:
    """A tiny CLIPModel + CLIPProcessor with random weights, saved with save_pretrained (for --verify tests)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(tmp))
    n = len(tokenizer)
    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    config = CLIPConfig(text_config=dict(vocab_size=n, max_position_embeddings=77, bos_token_id=n - 2,
                                         eos_token_id=n - 1, pad_token_id=n - 1, **small),
                        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
