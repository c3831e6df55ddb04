"""Stage 2: prompt templates turn a record into prompt text; the response follows the prompt.

A template is a small named object kept in ``TEMPLATES``. The name is saved with every trained
model (``heed.json``) so generation formats prompts exactly as training did.
"""

from __future__ import annotations

import json
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
    system_format: str = ""  # format with {system}: a system prompt, written in place of the preamble

    def head(self, system: str | None = None) -> str:
        """What opens a prompt: the system prompt when one is given, else the preamble."""
        if system is None:
            return self.preamble
        if not self.system_format:
            takes = ", ".join(n for n, t in TEMPLATES.items() if t.system_format or t.uses_tokenizer)
            raise HeedError(f"template {self.name!r} takes no system prompt; drop --system (or the records' "
                            f"system turns) or choose one of: {takes}")
        return self.system_format.format(system=system)

    def prompt(self, instruction: str, input: str = "", tokenizer: Any = None, system: str | None = None) -> str:
        text = self.head(system) + self.instruction.format(instruction=instruction)
        if input:
            text += self.input.format(input=input)
        return text + self.response

    def turn_prompt(self, user: str, *, first: bool, system: str | None = None) -> str:
        """The prompt text of one user turn of a conversation. The first is ``prompt(user)``; a later one
        follows the previous reply's EOS directly: the instruction marker without its leading blank lines.

        alpaca, two turns:  preamble "\n\n### Instruction:\nu1\n\n### Response:\n" a1 <EOS>
                            "### Instruction:\nu2\n\n### Response:\n" a2 <EOS>
        """
        if first:
            return self.prompt(user, system=system)
        return self.instruction.format(instruction=user).lstrip("\n") + self.response

    def chat_template(self, *, bos: bool, system: str | None = None) -> str | None:
        """This template as a Jinja chat template, for a saved tokenizer: ``apply_chat_template(messages,
        add_generation_prompt=True)`` then formats as heed does (``turn_prompt``; EOS after each reply; the
        default ``system`` prompt, or the preamble, when the messages have none; BOS first when ``bos``).
        Markers in message text become control tokens there, as with any chat template; heed keeps them text."""
        def lit(text: str) -> str:
            return "{{ " + json.dumps(text) + " }}" if text else ""

        before, after = self.instruction.split("{instruction}")
        return ("{%- set turns = messages -%}" + ("{{ bos_token }}" if bos else "")
                + "{%- if messages and messages[0]['role'] == 'system' -%}"
                + lit(self.system_format.split("{system}")[0]) + "{{ messages[0]['content'] }}"
                + lit(self.system_format.split("{system}")[-1]) + "{%- set turns = messages[1:] -%}"
                + "{%- else -%}" + lit(self.head(system)) + "{%- endif -%}"
                + "{%- for m in turns -%}{%- if m['role'] == 'user' -%}"
                + "{%- if loop.first -%}" + lit(before) + "{%- else -%}" + lit(before.lstrip("\n")) + "{%- endif -%}"
                + "{{ m['content'] }}" + lit(after + self.response)
                + "{%- elif m['role'] == 'assistant' -%}{{ m['content'] }}{{ eos_token }}"
                + "{%- else -%}{{ raise_exception('heed template " + self.name + ": roles are system (first), "
                + "user and assistant') }}{%- endif -%}{%- endfor -%}")

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

    def prompt(self, instruction: str, input: str = "", tokenizer: Any = None, system: str | None = None) -> str:
        user = instruction + (f"\n\n{input}" if input else "")
        messages = ([{"role": "system", "content": system}] if system is not None else [])
        return self.render(messages + [{"role": "user", "content": user}], tokenizer, generation=True)

    def render(self, messages: list[dict[str, str]], tokenizer: Any, *, generation: bool) -> str:
        """The tokenizer's chat template applied to ``messages`` as text."""
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise HeedError(
                "template 'chat' needs a tokenizer that ships a chat template; "
                f"choose another with --template ({', '.join(n for n in TEMPLATES if n != 'chat')})"
            )
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        except Exception as e:  # the template's own raise_exception (e.g. "System role not supported")
            import jinja2

            if not isinstance(e, (jinja2.TemplateError, ValueError)):
                raise
            raise HeedError(f"the tokenizer's chat template refused the conversation: {e}") from None

    @property
    def stop_markers(self) -> tuple[str, ...]:
        return ()

    def chat_template(self, *, bos: bool, system: str | None = None) -> str | None:
        return None  # the tokenizer's own stays

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
            system_format="{system}",
        ),
        Template(
            "instruction-response",
            "",
            "### Instruction:\n{instruction}",
            "\n\n### Input:\n{input}",
            "\n\n### Response:\n",
            "the Alpaca markers without the preamble",
            system_format="{system}\n\n",
        ),
        Template(
            "phi3",
            "",
            "<|user|>\n{instruction}",
            "\n{input}",
            "\n<|assistant|>\n",
            "Phi-3 style <|user|> / <|assistant|> turns",
            system_format="<|system|>\n{system}\n",
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
