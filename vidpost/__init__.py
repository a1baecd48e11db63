"""vidpost: post-training for video diffusion transformers (SFT, GRPO, prompt enhancement, inference speed)."""

__version__ = "0.1.0"
