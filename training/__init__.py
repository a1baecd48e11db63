"""The trainer core every stage uses: config sections, checkpoints and resume, optimiser and schedules, LoRA,
EMA and the stage runner."""
