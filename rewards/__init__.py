"""vidpost.rewards — reward models behind one contract: the signal of stage 2 RL (GRPO) and of the stage 3 rewriter's
GRPO, and the scores of every evaluation."""
