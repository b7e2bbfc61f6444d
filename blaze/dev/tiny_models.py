"""Tiny random models for tests, benchmarks and experiments (``blaze models make-tiny``).

A development aid, not part of any serving path: the weights are random and the output is
noise. No model hub is reachable here, so tests build these instead of downloading.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tiny_llm(
    target: Path,
    seed: int = 0,
    vocab_size: int = 320,
    hidden_size: int = 32,
    init_range: float = 0.02,
) -> Path:
    """Write a tiny random Llama-style model and a trained byte-level tokenizer (under 1 s);
    ``hidden_size`` 32 makes about 0.1 MB of weights, 128 about 1.4 MB. A larger
    ``init_range`` (weights' standard deviation) makes its next token depend more on the
    input: its greedy texts vary with the prompt, and so can rounding differences."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        "the quick brown fox jumps over the lazy dog",
        "batch inference with queues and workers",
        "what is the capital of france? paris is the capital.",
    ] * 20
    bpe.train_from_iterator(corpus, trainer=trainer)
    tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=init_range,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target


def make_tiny_diffusion(target: Path, seed: int = 0) -> Path:
    """Write a tiny random Stable Diffusion pipeline with a character-level CLIP tokenizer.

    UNet, VAE and text encoder are a few hundred kB; 64x64 images in a few steps take well
    under a second on a CPU. The images are noise-like: this is for tests and benchmarks.
    """
    import json
    import string

    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits + ".,!?'-:;()":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-clip-", dir=target))
    try:
        (tmp / "vocab.json").write_text(json.dumps(vocab))
        (tmp / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per character
        tokenizer = CLIPTokenizer(
            str(tmp / "vocab.json"),
            str(tmp / "merges.txt"),
            pad_token="<|endoftext|>",
            model_max_length=77,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=[8, 16],
        norm_num_groups=4,
        sample_size=32,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(target)
    return target
