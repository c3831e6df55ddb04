"""Stage 2: prompt templates turn a record into prompt text; the response follows the prompt.

A template is a small named object kept in ``TEMPLATES``. The name is saved with every trained
model (``heed.json``) so generation formats prompts exactly as training did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heed.errors import HeedError

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


@dataclass(frozen=True)
class Template:
    """Marker-style template: ``preamble + instruction + [input] + response header``, then the response.

    >>> TEMPLATES["instruction-response"].prompt("Add 2 and 3.", "")
    '### Instruction:\\nAdd 2 and 3.\\n\\n### Response:\\n'
    """

    name: str
    preamble: str
    instruction: str  # format with {instruction}
    input: str  # format with {input}; used only when the input is non-empty
    response: str  # the header that introduces the response
    description: str = ""
    uses_tokenizer: bool = False  # True when the prompt text comes from the tokenizer (chat)

    def prompt(self, instruction: str, input: str = "", tokenizer: Any = None) -> str:
        text = self.preamble + self.instruction.format(instruction=instruction)
        if input:
            text += self.input.format(input=input)
        return text + self.response

    @property
    def stop_markers(self) -> tuple[str, ...]:
        """Text that starts a new turn: a response is cut there (base models tend to run on)."""
        # The preamble's first words are enough, and still match when generation stopped inside it.
        heads = (" ".join(self.preamble.split()[:4]), self.instruction.split("{")[0].strip())
        return tuple(h for h in heads if h)

    @property
    def response_marker(self) -> str:
        return self.response.strip()


@dataclass(frozen=True)
class ChatTemplate(Template):
    """Uses the tokenizer's own chat template: user = instruction (+ input), assistant = response."""

    def prompt(self, instruction: str, input: str = "", tokenizer: Any = None) -> str:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise HeedError(
                "template 'chat' needs a tokenizer that ships a chat template; "
                f"choose another with --template ({', '.join(n for n in TEMPLATES if n != 'chat')})"
            )
        user = instruction + (f"\n\n{input}" if input else "")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )

    @property
    def stop_markers(self) -> tuple[str, ...]:
        return ()

    @property
    def response_marker(self) -> str:
        return ""


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            "alpaca",
            ALPACA_PREAMBLE,
            "\n\n### Instruction:\n{instruction}",
            "\n\n### Input:\n{input}",
            "\n\n### Response:\n",
            "Alpaca preamble with ### Instruction / ### Input / ### Response markers (the original design)",
        ),
        Template(
            "instruction-response",
            "",
            "### Instruction:\n{instruction}",
            "\n\n### Input:\n{input}",
            "\n\n### Response:\n",
            "the Alpaca markers without the preamble",
        ),
        Template(
            "phi3",
            "",
            "<|user|>\n{instruction}",
            "\n{input}",
            "\n<|assistant|>\n",
            "Phi-3 style <|user|> / <|assistant|> turns",
        ),
        ChatTemplate(
            "chat", "", "", "", "",
            "the tokenizer's own chat template (models that ship one)",
            uses_tokenizer=True,
        ),
    )
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise HeedError(f"unknown template {name!r}; choose one of: {', '.join(TEMPLATES)}") from None


def extract_response(generated: str, template: Template) -> str:
    """The response inside text generated after the prompt.

    Removes a repeated response marker and surrounding whitespace, and cuts the text where the model
    starts a new instruction (a base model often does):

    >>> extract_response("### Response:\\n 5\\n\\n### Instruction:\\nAdd 1", TEMPLATES["alpaca"])
    '5'
    """
    text = generated
    marker = template.response_marker
    if marker:
        text = text.replace(marker, "")
    for stop in template.stop_markers:
        cut = text.find(stop)
        if cut >= 0:
            text = text[:cut]
    return text.strip()
