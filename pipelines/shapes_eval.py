"""`vidpost shapes eval`: verifier success of one or more models on the Shapes world's held-out prompts.

    vidpost shapes eval --models shapes-base shapes [--seeds 2] [--prompt-key caption] [--out results/shapes-eval]

For every model (a preset, a folder, or `folder+lora_folder`), each held-out prompt is sampled with `--seeds`
seeds (video k of prompt i: the prompt's own seed + k·100003, `vidpost.seeding`, the same for every
model) at the model's default size and steps (its `vidpost.json`, else the Wan 480p recipe), and
the Shapes verifier scores the video against the prompt's scene spec. It is `vidpost compare MODEL ... --columns
attributes` (`vidpost.evaluation.compare`): success with its 95% Wilson interval, graded, the paired delta to the
first model and the per-attribute means, in `table.md`, `results.json` and `grid.png`. `--prompt-key prompt_user`
evaluates the free-form user-style prompts of the same scenes.
"""

from __future__ import annotations

from vidpost.config import ArgumentParser, finite_float, positive_int
from vidpost.evaluation.compare import RowSpec
from vidpost.pipelines.compare import add_common_arguments, run_compare
from vidpost.training.runner import ExitCode


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="vidpost shapes eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["shapes-base", "shapes"], help="presets/folders (base+lora ok)")
    p.add_argument("--prompt-key", default="caption", choices=["caption", "prompt_user"])
    p.add_argument("--steps", type=positive_int)
    p.add_argument("--frames", "--num-frames", dest="num_frames", type=positive_int)
    p.add_argument("--height", type=positive_int)
    p.add_argument("--width", type=positive_int)
    p.add_argument("--guidance", type=finite_float)
    p.add_argument("--shift", type=finite_float)
    p.add_argument("--keyframe", help="a latent frame index generated first, then the clip around it; or 'off'")
    add_common_arguments(p, "outputs/shapes-eval")
    args = p.parse_args(argv)
    settings = {"steps": args.steps, "guidance": args.guidance, "shift": args.shift, "frames": args.num_frames}
    settings |= {"height": args.height, "width": args.width, "keyframe": args.keyframe, "prompts": args.prompt_key}
    rows = [RowSpec(m, label=m, **settings) for m in args.models]
    run_compare(
        rows, columns=("attributes",), seeds=args.seeds, limit=args.limit, batch_size=args.batch_size,
        out=args.out, about=f"Prompts: `{args.prompt_key}`.",
    )  # fmt: skip
    return ExitCode.OK


if __name__ == "__main__":
    from vidpost.errors import run_main

    raise SystemExit(run_main(main))
