"""vidpost.kernels — the attention kernels of stage 4 (inference optimisation): Enhance-A-Video ("eav") cross-frame
intensity, FP8 block-sparse attention, LiT linear attention. Each op: pure-PyTorch reference → Triton kernel → wrapper.
"""
