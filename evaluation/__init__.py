"""The evaluation core: generate for (prompts, seeds, settings), score with rewards, statistics, reports."""
