"""HunyuanVideo text-to-video adapter over diffusers' `HunyuanVideoTransformer3DModel` and
`AutoencoderKLHunyuanVideo`, with its two text encoders (a Llama-architecture LM and CLIP-L).

Conditioning follows `diffusers.HunyuanVideoPipeline`: each prompt is placed in the chat-style prompt template,
tokenized to `crop_start + max_sequence_length` tokens, encoded by the Llama model, and the hidden state of the
third-to-last layer is kept after cropping the template's first `crop_start` tokens, with its attention mask;
the CLIP text model's pooled output is the pooled projection. Latents are scaled by the VAE's
`scaling_factor`. Guidance: `guidance_scale` feeds the transformer's guidance embedding (HunyuanVideo is
guidance-distilled); true classifier-free guidance with a negative prompt runs only when the adapter's
`true_cfg_scale` > 1, as in the pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
)
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

from .base import PromptEmbeds, VideoModelAdapter, check_model_dir, read_vidpost_config
from .tokenizers import BASE_WORDS, build_clip_tokenizer, build_llama_tokenizer


class HunyuanVideoAdapter(VideoModelAdapter):
    family = "hunyuan_video"
    pipeline_class_names = ("HunyuanVideoPipeline",)
    required_components = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    schedule = "uniform"
    lora_target_modules = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

    def __init__(
        self,
        transformer: HunyuanVideoTransformer3DModel,
        vae: AutoencoderKLHunyuanVideo,
        text_encoder: LlamaModel,
        tokenizer: Any,
        text_encoder_2: CLIPTextModel,
        tokenizer_2: Any,
        *,
        prompt_template: dict[str, Any] | None = None,
        max_sequence_length: int = 256,
        num_hidden_layers_to_skip: int = 2,
        default_shift: float = 7.0,
        default_guidance_scale: float = 6.0,
        true_cfg_scale: float = 1.0,
    ) -> None:
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.text_encoder_2 = text_encoder_2
        self.tokenizer_2 = tokenizer_2
        self.prompt_template = dict(prompt_template or DEFAULT_PROMPT_TEMPLATE)
        self.max_sequence_length = max_sequence_length
        self.num_hidden_layers_to_skip = num_hidden_layers_to_skip
        self.default_shift = default_shift
        self.default_guidance_scale = default_guidance_scale
        self.true_cfg_scale = true_cfg_scale

    @property
    def vae_scale_temporal(self) -> int:
        return int(self.vae.config.temporal_compression_ratio)

    @property
    def vae_scale_spatial(self) -> int:
        return int(self.vae.config.spatial_compression_ratio)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        c = self.transformer.config
        return int(c.patch_size_t), int(c.patch_size), int(c.patch_size)

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {
            "transformer": self.transformer,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "text_encoder_2": self.text_encoder_2,
        }

    def uses_cfg(self, guidance_scale: float) -> bool:
        return self.true_cfg_scale > 1.0

    def cfg_scale(self, guidance_scale: float) -> float:
        return self.true_cfg_scale

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        template = self.prompt_template
        crop_start = int(template["crop_start"])
        tok = self.tokenizer(
            [template["template"].format(p) for p in prompts],
            max_length=self.max_sequence_length + crop_start,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
            return_attention_mask=True,
        )
        dev = self.text_encoder.device
        mask = tok.attention_mask.to(dev)
        hidden = self.text_encoder(
            input_ids=tok.input_ids.to(dev), attention_mask=mask, output_hidden_states=True
        ).hidden_states[-(self.num_hidden_layers_to_skip + 1)]
        hidden, mask = hidden[:, crop_start:], mask[:, crop_start:]
        tok2 = self.tokenizer_2(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        pooled = self.text_encoder_2(tok2.input_ids.to(self.text_encoder_2.device)).pooler_output
        return PromptEmbeds(embeds=hidden.to(self.dtype), mask=mask.to(self.dtype), pooled=pooled.to(self.dtype))

    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = (video.to(self.vae.device, self.vae.dtype) * 2.0 - 1.0).clamp(-1, 1)
        dist = self.vae.encode(x).latent_dist
        z = dist.mode() if generator is None else dist.sample(generator)
        return (z * self.vae.config.scaling_factor).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.vae.device, self.vae.dtype) / self.vae.config.scaling_factor
        video = self.vae.decode(z, return_dict=False)[0]
        return (video.float() / 2 + 0.5).clamp(0, 1)

    def forward_transformer(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: PromptEmbeds,
        guidance_scale: float,
        model: torch.nn.Module | None = None,
        given: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if given is not None:
            raise NotImplementedError("HunyuanVideo takes one timestep per clip: given-frame conditioning is Wan's")
        self.attention_state.grid = self.latent_grid(latents.shape)
        dtype = self.dtype
        b = latents.shape[0]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), float(guidance_scale), dtype=dtype, device=latents.device) * 1000.0
        return (model or self.transformer)(
            hidden_states=latents.to(dtype),
            timestep=(sigma.to(torch.float32) * 1000.0),
            encoder_hidden_states=cond.embeds.to(dtype),
            encoder_attention_mask=cond.mask.to(dtype),
            pooled_projections=cond.pooled.to(dtype),
            guidance=guidance,
            return_dict=False,
        )[0]

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> HunyuanVideoAdapter:
        path = Path(path)
        check_model_dir(path, cls.required_components)
        extra = read_vidpost_config(path)
        transformer = HunyuanVideoTransformer3DModel.from_pretrained(
            path, subfolder="transformer", torch_dtype=dtype, use_safetensors=True
        )
        vae = AutoencoderKLHunyuanVideo.from_pretrained(path, subfolder="vae", torch_dtype=dtype, use_safetensors=True)
        text_encoder = LlamaModel.from_pretrained(path / "text_encoder", dtype=dtype, use_safetensors=True)
        text_encoder_2 = CLIPTextModel.from_pretrained(path / "text_encoder_2", dtype=dtype, use_safetensors=True)
        adapter = cls(
            transformer,
            vae,
            text_encoder,
            AutoTokenizer.from_pretrained(path / "tokenizer"),
            text_encoder_2,
            AutoTokenizer.from_pretrained(path / "tokenizer_2"),
            prompt_template=extra.get("prompt_template"),
            max_sequence_length=int(extra.get("max_sequence_length", 256)),
            default_shift=float(extra.get("default_shift", 7.0)),
            default_guidance_scale=float(extra.get("default_guidance_scale", 6.0)),
            true_cfg_scale=float(extra.get("true_cfg_scale", 1.0)),
        )
        adapter.generation = extra.get("generation")
        return adapter.to(device).eval().requires_grad_(False)

    def vidpost_config(self) -> dict[str, Any]:
        return {
            **super().vidpost_config(),
            "prompt_template": self.prompt_template,
            "max_sequence_length": self.max_sequence_length,
            "true_cfg_scale": self.true_cfg_scale,
        }

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        *,
        words: list[str] | None = None,
        num_layers: int = 1,
        num_single_layers: int = 1,
        num_heads: int = 2,
        head_dim: int = 10,
        text_dim: int = 16,
        pooled_dim: int = 8,
        latent_channels: int = 4,
        max_sequence_length: int = 16,
        **transformer_overrides: Any,
    ) -> HunyuanVideoAdapter:
        """Randomly initialised miniature of the same classes (tokenizers built in memory)."""
        torch.manual_seed(seed)
        words = list(words or BASE_WORDS) + ["describe", "video", "system", "user"]
        tokenizer = build_llama_tokenizer(words)
        tokenizer_2 = build_clip_tokenizer(words)
        text_encoder = LlamaModel(
            LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=text_dim,
                intermediate_size=text_dim * 2,
                num_hidden_layers=3,
                num_attention_heads=2,
                num_key_value_heads=2,
                max_position_embeddings=128,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        ).eval()
        text_encoder_2 = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer_2),
                hidden_size=pooled_dim,
                intermediate_size=pooled_dim * 2,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=77,
                projection_dim=pooled_dim,
                bos_token_id=tokenizer_2.bos_token_id,
                eos_token_id=tokenizer_2.eos_token_id,
                pad_token_id=tokenizer_2.pad_token_id,
            )
        ).eval()
        vae = AutoencoderKLHunyuanVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=latent_channels,
            down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            act_fn="silu",
            norm_num_groups=4,
            scaling_factor=0.476986,
            spatial_compression_ratio=8,
            temporal_compression_ratio=4,
            mid_block_add_attention=True,
        ).eval()
        rope = (
            (2, 4, 4) if head_dim == 10 else (head_dim - 2 * (head_dim * 3 // 8), head_dim * 3 // 8, head_dim * 3 // 8)
        )
        tcfg = dict(
            in_channels=latent_channels,
            out_channels=latent_channels,
            num_attention_heads=num_heads,
            attention_head_dim=head_dim,
            num_layers=num_layers,
            num_single_layers=num_single_layers,
            num_refiner_layers=1,
            patch_size=1,
            patch_size_t=1,
            guidance_embeds=True,
            text_embed_dim=text_dim,
            pooled_projection_dim=pooled_dim,
            rope_axes_dim=rope,
        )
        tcfg.update(transformer_overrides)
        transformer = HunyuanVideoTransformer3DModel(**tcfg).eval()
        template = _tiny_template(tokenizer)
        return cls(
            transformer,
            vae,
            text_encoder,
            tokenizer,
            text_encoder_2,
            tokenizer_2,
            prompt_template=template,
            max_sequence_length=max_sequence_length,
            default_shift=7.0,
            default_guidance_scale=6.0,
        ).requires_grad_(False)

    def pipeline(self) -> HunyuanVideoPipeline:
        return HunyuanVideoPipeline(
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            transformer=self.transformer,
            vae=self.vae,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=self.default_shift),
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
        )


def _tiny_template(tokenizer: Any) -> dict[str, Any]:
    """A short chat template for miniatures with `crop_start` = the token count of its part before the prompt."""
    template = (
        "<|start_header_id|>system<|end_header_id|>describe the video<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>{}<|eot_id|>"
    )
    prefix = template.split("{}")[0]
    crop_start = len(tokenizer(prefix).input_ids)
    return {"template": template, "crop_start": crop_start}
