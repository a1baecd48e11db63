"""vidpost: post-training for video diffusion transformers (SFT, GRPO, prompt enhancement, inference speed)."""

__version__ = "0.1.0"

import logging as _logging

# torchao (the `quant` extra: the real low-precision kernels) prints import-time notices through torch's pytree
# registry and through diffusers' torchao checkpoint loader (torchao-serialised checkpoints, which vidpost does not
# read); they would open every command's output.
for _name in ("torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
