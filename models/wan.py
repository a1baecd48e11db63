"""Wan2.1 / Wan2.2 text-to-video adapter over diffusers' `WanTransformer3DModel`, `AutoencoderKLWan` and UMT5.

Conditioning follows `diffusers.WanPipeline` exactly: the prompt is cleaned with the pipeline's own
`prompt_clean`, tokenized to `max_sequence_length` (512) with padding, encoded by `UMT5EncoderModel`, and the
hidden states past each prompt's length are zeroed (Wan attends to the zero-padded sequence; no mask).
Latents are normalised per channel with the VAE config's `latents_mean` / `latents_std`:
z = (μ_vae(x) − mean) / std. Classifier-free guidance is true CFG with a second pass on the negative prompt.

Wan2.2 A14B-style checkpoints with a second transformer (`transformer_2`) and `boundary_ratio` are supported:
`transformer` denoises σ·1000 ≥ boundary, `transformer_2` below it. `expand_timesteps` (Wan2.2 TI2V) passes the
timestep per token, as the pipeline does for text-to-video.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from .base import PromptEmbeds, VideoModelAdapter, check_model_dir, read_vidpost_config
from .tokenizers import BASE_WORDS, build_t5_tokenizer


@contextlib.contextmanager
def channels_last(module: torch.nn.Module) -> Iterator[None]:
    """Hold the convolution weights of `module` in channels-last layout (3D and 2D) while the block runs. On the
    CPU the Wan VAE decodes about 1.7× faster so (oneDNN convolutions and the channel RMS norm both prefer it) and
    the output matches the default layout to float rounding. The parameters get their own layout back afterwards,
    so saving (safetensors needs contiguous tensors) and training see what they always did."""
    saved = []
    for p in module.parameters():
        fmt = {5: torch.channels_last_3d, 4: torch.channels_last}.get(p.dim())
        if fmt is not None:
            saved.append((p, p.data))
            p.data = p.data.contiguous(memory_format=fmt)
    try:
        yield
    finally:
        for p, data in saved:
            p.data = data


def vae_decode(vae: AutoencoderKLWan, z: torch.Tensor, *, channels_last_weights: bool) -> torch.Tensor:
    """`vae.decode` of de-normalised latents, optionally with the weights and input in channels-last layout
    (`channels_last`); `WanAdapter.decode` takes that path on the CPU."""
    if not channels_last_weights:
        return vae.decode(z, return_dict=False)[0]
    with channels_last(vae):
        return vae.decode(z.contiguous(memory_format=torch.channels_last_3d), return_dict=False)[0]


class WanAdapter(VideoModelAdapter):
    family = "wan"
    pipeline_class_names = ("WanPipeline",)
    required_components = ("transformer", "vae", "text_encoder", "tokenizer")
    schedule = "diffusers"
    lora_target_modules = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")

    def __init__(
        self,
        transformer: WanTransformer3DModel,
        vae: AutoencoderKLWan,
        text_encoder: UMT5EncoderModel,
        tokenizer: Any,
        *,
        transformer_2: WanTransformer3DModel | None = None,
        boundary_ratio: float | None = None,
        expand_timesteps: bool = False,
        max_sequence_length: int = 512,
        default_shift: float = 3.0,
        default_guidance_scale: float = 5.0,
    ) -> None:
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.boundary_ratio = boundary_ratio
        self.expand_timesteps = expand_timesteps
        self.max_sequence_length = max_sequence_length
        self.default_shift = default_shift
        self.default_guidance_scale = default_guidance_scale

    # ---- geometry ----------------------------------------------------------------------------------------
    @property
    def vae_scale_temporal(self) -> int:
        return int(self.vae.config.scale_factor_temporal)

    @property
    def vae_scale_spatial(self) -> int:
        return int(self.vae.config.scale_factor_spatial)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.transformer.config.patch_size)

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def max_positions(self) -> int | None:
        return int(self.transformer.config.rope_max_seq_len)

    def modules(self) -> dict[str, torch.nn.Module]:
        mods = {"transformer": self.transformer, "vae": self.vae, "text_encoder": self.text_encoder}
        if self.transformer_2 is not None:
            mods["transformer_2"] = self.transformer_2
        return mods

    # ---- contract ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        prompts = [prompt_clean(p) for p in prompts]
        L = self.max_sequence_length
        tok = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=L,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        dev = self.text_encoder.device
        hidden = self.text_encoder(tok.input_ids.to(dev), tok.attention_mask.to(dev)).last_hidden_state
        keep = tok.attention_mask.to(dev).bool().unsqueeze(-1)
        # Zero the padded positions, as WanPipeline does by slicing to each prompt's length and re-padding.
        hidden = torch.where(keep, hidden, torch.zeros_like(hidden))
        return PromptEmbeds(embeds=hidden.to(self.dtype))

    def _latent_norm(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.vae.config.z_dim
        mean = torch.tensor(self.vae.config.latents_mean).view(1, z, 1, 1, 1).to(like.device, like.dtype)
        std = torch.tensor(self.vae.config.latents_std).view(1, z, 1, 1, 1).to(like.device, like.dtype)
        return mean, std

    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = (video.to(self.vae.device, self.vae.dtype) * 2.0 - 1.0).clamp(-1, 1)
        dist = self.vae.encode(x).latent_dist
        z = dist.mode() if generator is None else dist.sample(generator)
        mean, std = self._latent_norm(z)
        return ((z - mean) / std).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.vae.device, self.vae.dtype)
        mean, std = self._latent_norm(z)
        # Same arithmetic as WanPipeline: latents / (1 / std) + mean.
        z = z / (1.0 / std) + mean
        video = vae_decode(self.vae, z, channels_last_weights=z.device.type == "cpu")
        return (video.float() / 2 + 0.5).clamp(0, 1)

    def _model_for(self, sigma: torch.Tensor) -> WanTransformer3DModel:
        if self.transformer_2 is None or self.boundary_ratio is None:
            return self.transformer
        t = float(sigma.flatten()[0]) * 1000.0
        return self.transformer if t >= self.boundary_ratio * 1000.0 else self.transformer_2

    def forward_transformer(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: PromptEmbeds,
        guidance_scale: float,
        model: torch.nn.Module | None = None,
        given: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The tokens of `given` latent frames (bool, [T] or [B, T]) get timestep 0, the rest σ·1000: the per-token
        timesteps of Wan2.2 TI2V's first-frame conditioning, for any frames."""
        self.attention_state.grid = self.latent_grid(latents.shape)
        base = self._model_for(sigma)
        dtype = base.dtype
        model = base if model is None or base is not self.transformer else model
        timestep = sigma.to(torch.float32) * 1000.0
        if self.expand_timesteps or given is not None:
            b, _, t, h, w = latents.shape
            pt, ph, pw = self.patch_size
            timestep = timestep[:, None].expand(-1, (t // pt) * (h // ph) * (w // pw))
            if given is not None:
                frame = torch.arange(t // pt, device=latents.device).repeat_interleave((h // ph) * (w // pw)) * pt
                mask = given.to(latents.device, torch.bool).expand(b, t)[:, frame]
                timestep = torch.where(mask, 0.0, timestep)
        out = model(
            hidden_states=latents.to(dtype),
            timestep=timestep,
            encoder_hidden_states=cond.embeds.to(dtype),
            return_dict=False,
        )[0]
        return out

    # ---- I/O ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> WanAdapter:
        path = Path(path)
        index = check_model_dir(path, cls.required_components)
        extra = read_vidpost_config(path)
        kw = {"torch_dtype": dtype, "use_safetensors": True}
        transformer = WanTransformer3DModel.from_pretrained(path, subfolder="transformer", **kw)
        transformer_2 = None
        if index.get("transformer_2") not in (None, [None, None]):
            check_model_dir(path, ("transformer_2",))
            transformer_2 = WanTransformer3DModel.from_pretrained(path, subfolder="transformer_2", **kw)
        # The Wan VAE is kept in float32 (as the reference recipes do); it is small next to the transformer.
        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32, use_safetensors=True)
        text_encoder = UMT5EncoderModel.from_pretrained(path / "text_encoder", dtype=dtype, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
        shift = extra.get("default_shift", _scheduler_shift(path, default=3.0))
        adapter = cls(
            transformer,
            vae,
            text_encoder,
            tokenizer,
            transformer_2=transformer_2,
            boundary_ratio=index.get("boundary_ratio"),
            expand_timesteps=bool(index.get("expand_timesteps", False)),
            max_sequence_length=int(extra.get("max_sequence_length", 512)),
            default_shift=float(shift),
            default_guidance_scale=float(extra.get("default_guidance_scale", 5.0)),
        )
        adapter.generation = extra.get("generation")
        return adapter.to(device).eval().requires_grad_(False)

    def vidpost_config(self) -> dict[str, Any]:
        return {**super().vidpost_config(), "max_sequence_length": self.max_sequence_length}

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        *,
        words: list[str] | None = None,
        num_layers: int = 2,
        num_heads: int = 2,
        head_dim: int = 12,
        ffn_dim: int = 32,
        text_dim: int = 32,
        text_layers: int = 2,
        latent_channels: int = 16,
        vae_base_dim: int = 3,
        max_sequence_length: int = 16,
        **transformer_overrides: Any,
    ) -> WanAdapter:
        """Randomly initialised miniature of the same classes (tokenizer built in memory)."""
        torch.manual_seed(seed)
        tokenizer = build_t5_tokenizer(words or BASE_WORDS)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer),
                d_model=text_dim,
                d_kv=max(4, text_dim // 4),
                d_ff=text_dim * 2,
                num_layers=text_layers,
                num_heads=4,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=32,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.pad_token_id,
            )
        ).eval()
        vae = AutoencoderKLWan(
            base_dim=vae_base_dim,
            z_dim=latent_channels,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.0] * latent_channels,
            latents_std=[1.0] * latent_channels,
        ).eval()
        tcfg = dict(
            patch_size=(1, 2, 2),
            num_attention_heads=num_heads,
            attention_head_dim=head_dim,
            in_channels=latent_channels,
            out_channels=latent_channels,
            text_dim=text_dim,
            freq_dim=256,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=1024,  # as Wan2.1 (the rotary table covers 1024 positions per axis)
        )
        tcfg.update(transformer_overrides)
        transformer = WanTransformer3DModel(**tcfg).eval()
        return cls(
            transformer,
            vae,
            text_encoder,
            tokenizer,
            max_sequence_length=max_sequence_length,
            default_shift=3.0,
            default_guidance_scale=5.0,
        ).requires_grad_(False)

    def pipeline(self) -> WanPipeline:
        return WanPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.vae,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=self.default_shift),
            transformer=self.transformer,
            transformer_2=self.transformer_2,
            boundary_ratio=self.boundary_ratio,
            expand_timesteps=self.expand_timesteps,
        )


def _scheduler_shift(path: Path, default: float) -> float:
    """The flow shift recorded in the checkpoint's scheduler config (`shift` or UniPC's `flow_shift`)."""
    f = path / "scheduler" / "scheduler_config.json"
    if not f.exists():
        return default
    cfg = json.loads(f.read_text())
    for key in ("shift", "flow_shift"):
        if cfg.get(key) is not None:
            return float(cfg[key])
    return default
