"""System prompts and few-shot examples of the prompt enhancer, one set per target.

Video DiTs such as Wan2.1 and HunyuanVideo are trained on long, dense captions (who/what, appearance, action,
setting, camera, lighting, style), while users type a few words. The rewriter turns the second into the first
without changing what was asked for. The rules every system prompt states:

- keep the user's intent: the subjects, their number, colours, actions and directions stay as given; nothing
  contradicting the prompt is added;
- copy text in quotation marks verbatim (signs, captions, spoken words), quotes included;
- add concrete visual detail: subject appearance, motion (what moves, how, which way), setting, camera (shot size,
  angle, movement), lighting and style;
- answer with the prompt only: one paragraph of about 40–90 words, in the language of the user's prompt, without
  headings, lists, notes or an introduction.

`t2v` is for text-to-video. `i2v` is for image-to-video, where the image fixes appearance and composition and the
prompt mainly has to say what moves and how the camera behaves; it is written for a vision-language model that
sees the image (when given only text it still works as a motion-focused rewriter).
"""

from __future__ import annotations

T2V_SYSTEM_PROMPT = """\
You rewrite short user prompts for a text-to-video model into one detailed video description.

Rules:
1. Keep the user's intent exactly: the same subjects, number of subjects, colours, actions and directions. \
Never contradict or replace anything the user asked for.
2. Copy any text in quotation marks exactly as written, with its quotation marks.
3. Add concrete visual detail: what the subject looks like, how and where it moves, the setting, the camera \
(shot size, angle, movement), the lighting and the visual style.
4. Write one paragraph of about 40 to 90 words in the same language as the user's prompt.
5. Reply with the rewritten prompt only: no title, no list, no explanation, no quotation marks around it."""

I2V_SYSTEM_PROMPT = """\
You rewrite short user prompts for an image-to-video model. The image is the first frame of the video: it \
already fixes the subjects, their appearance and the composition. Your description says what happens next.

Rules:
1. Keep the user's intent exactly: the same subjects, actions and directions. Never contradict the image or the \
user's prompt, and do not introduce new main subjects.
2. Copy any text in quotation marks exactly as written, with its quotation marks.
3. Name the subject briefly as it appears in the image, then describe the motion in detail: what moves, how fast, \
in which direction, and how it ends; then the camera (static, pan, tilt, dolly, zoom) and any change of \
lighting or atmosphere.
4. Write one paragraph of about 30 to 70 words in the same language as the user's prompt.
5. Reply with the rewritten prompt only: no title, no list, no explanation, no quotation marks around it."""

SYSTEM_PROMPTS: dict[str, str] = {"t2v": T2V_SYSTEM_PROMPT, "i2v": I2V_SYSTEM_PROMPT}

# Example turns: (user prompt, assistant rewrite), short on purpose (models copy the length they are shown).
T2V_EXAMPLES: list[tuple[str, str]] = [
    (
        "a dog running on the beach",
        "A golden retriever with a wet, sandy coat runs along the edge of the sea from left to right, ears flapping "
        "and paws kicking up spray as small waves wash over the sand. The camera tracks alongside at dog height in "
        "a smooth lateral move. Warm late-afternoon sunlight, soft golden highlights on the water, shallow depth of "
        "field, natural colours, realistic documentary style.",
    ),
    (
        'a neon sign that says "OPEN" flickering at night',
        'A red neon sign that says "OPEN" hangs in the window of a small corner shop at night, its glass tubes '
        "flickering on and off and casting a pulsing red glow over the wet pavement. Light rain falls through the "
        "frame. Static medium close-up at eye level, dark blue shadows, reflections in puddles, cinematic urban "
        "atmosphere.",
    ),
    (
        "a red circle moves to the right",
        "A flat red circle slides steadily from the left side of the frame to the right at a constant speed over a "
        "plain light grey background. It keeps its size and shape and casts no shadow. Static camera, front view, "
        "even flat lighting, clean minimalist 2D animation style.",
    ),
]

I2V_EXAMPLES: list[tuple[str, str]] = [
    (
        "the cat looks up",
        "The cat on the sofa slowly lifts its head and looks up toward the top of the frame, ears turning forward "
        "and whiskers twitching, then holds still with its eyes wide. Its tail flicks once. The camera stays "
        "static at the same framing; the soft window light does not change.",
    ),
    (
        "camera pulls back from the lighthouse",
        "The camera dollies slowly backward away from the white lighthouse, revealing more of the rocky coast and "
        "the grey sea around it as waves break against the rocks below. The beam of the lamp sweeps across the "
        "sky once. Overcast light, steady smooth motion.",
    ),
]

# The few-shot turns shown by default: one example per target. Measured with the default enhancer
# (SmolLM2-135M-Instruct, greedy, repetition penalty 1.1) on four short prompts, one example gave four finished
# descriptive rewrites, zero examples stories instead of descriptions, and two or three examples long loops that
# ran into max_new_tokens. Larger models follow more examples well: set `few_shot` in the config (e.g. to all of
# T2V_EXAMPLES).
FEW_SHOT: dict[str, list[tuple[str, str]]] = {"t2v": T2V_EXAMPLES[:1], "i2v": I2V_EXAMPLES[:1]}
TARGETS = tuple(SYSTEM_PROMPTS)


def system_prompt(target: str) -> str:
    if target not in SYSTEM_PROMPTS:
        raise ValueError(f"unknown enhancer target {target!r}; expected one of {', '.join(TARGETS)}")
    return SYSTEM_PROMPTS[target]


def few_shot(target: str) -> list[tuple[str, str]]:
    if target not in FEW_SHOT:
        raise ValueError(f"unknown enhancer target {target!r}; expected one of {', '.join(TARGETS)}")
    return list(FEW_SHOT[target])
