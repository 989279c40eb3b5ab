"""The MLLM instructions XPSR used to caption images, and how their answers become prompts.

XPSR asks two questions of every image (reference §6):

* high-level (content), LLaVA-1.5: the full LLaVA prompt below, verbatim, including the space before the
  second newline that the official script has;
* low-level (quality), Q-Instruct InternLM-XComposer: the bare instruction ``Describe and evaluate the quality
  of the image.``, which that model's remote code wraps in its own chat template.

The InternLM-XComposer remote code cannot run here, so the low-level pass runs a LLaVA-architecture model by
default, with the instruction wrapped in the same LLaVA template as the high-level one. That is a deviation from
the official data and is recorded in the caption store's metadata.
"""

from __future__ import annotations

HIGHLEVEL_INSTRUCTION = "Please provide a descriptive summary of the content of this image."
LOWLEVEL_INSTRUCTION = "Describe and evaluate the quality of the image."

# LLaVA-1.5's plain conversation format as XPSR wrote it; `{instruction}` is followed by " \n" on purpose.
LLAVA_TEMPLATE = "<image>\nUSER: {instruction} \nASSISTANT:"
ANSWER_MARKER = "ASSISTANT:"

HIGHLEVEL_PROMPT = LLAVA_TEMPLATE.format(instruction=HIGHLEVEL_INSTRUCTION)
LOWLEVEL_PROMPT_LLAVA = LLAVA_TEMPLATE.format(instruction=LOWLEVEL_INSTRUCTION)

LOWLEVEL_DEVIATION = (
    "low-level descriptions come from a LLaVA-architecture model prompted with "
    f"{LOWLEVEL_PROMPT_LLAVA!r}; the official data used Q-Instruct InternLM-XComposer-VL-7B with the bare "
    f"instruction {LOWLEVEL_INSTRUCTION!r} and its own chat template"
)


def one_line(text: str) -> str:
    """Newlines to spaces and outer whitespace removed: the prompt readers only ever take a file's first line."""
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ").strip()


def llava_answer(decoded: str) -> str:
    """The assistant's reply in a decoded LLaVA sequence: the text after the *last* ``ASSISTANT:``.

    The whole sequence (prompt and reply) is decoded, as in the official script, so the split is what
    removes the prompt. Taking the last marker also cuts anything before an ``ASSISTANT:`` the model itself
    wrote, which is what the official script did too.
    """
    return decoded.rsplit(ANSWER_MARKER, 1)[-1]


def highlevel_postprocess(decoded: str) -> str:
    """Official high-level post-processing: text after the last ``ASSISTANT:``, newlines to spaces, stripped."""
    return one_line(llava_answer(decoded))


def lowlevel_postprocess(answer: str) -> str:
    """Official low-level post-processing of the model's answer: newlines to spaces (stripped as well)."""
    return one_line(answer)
