"""An Ollama ``Modelfile`` for an exported GGUF: heed's prompt template in Go-template syntax, its stop
sequences, and greedy decoding, so ``ollama create NAME -f Modelfile`` answers as ``heed generate`` does.

Ollama hands the template one ``{{ .Prompt }}``; heed's template puts the instruction there, and an
input, when a record has one, right after it (``ollama_prompt``), which is where heed's template puts it.
"""

from __future__ import annotations

from typing import Any

from heed.data.templates import Template
from heed.errors import HeedError

PROMPT = "{{ .Prompt }}"
_SLOT = "\x00heed-prompt\x00"  # stands for the prompt while heed's template renders around it


def go_template(template: Template, tokenizer: Any = None) -> str:
    """heed's ``template`` with ``{{ .Prompt }}`` where the instruction goes (BOS left to the runtime)."""
    text = template.prompt(_SLOT, "", tokenizer)
    bos = getattr(tokenizer, "bos_token", None) if tokenizer is not None else None
    if bos and text.startswith(bos):
        text = text[len(bos):]  # llama.cpp and Ollama add BOS themselves
    if text.count(_SLOT) != 1 or "{{" in text or '"""' in text:
        raise HeedError(f"template {template.name!r} cannot be written as an Ollama template")
    return text.replace(_SLOT, PROMPT)


def ollama_prompt(instruction: str, input: str, template: Template) -> str:
    """What to send Ollama as the prompt for a record: the instruction, then its input as heed's template
    writes it (for chat templates: the user turn heed writes, instruction and input)."""
    if template.uses_tokenizer:
        return instruction + (f"\n\n{input}" if input else "")
    return instruction + (template.input.format(input=input) if input else "")


def render(go_text: str, prompt: str) -> str:
    """The one substitution Ollama makes in a template written by ``go_template``."""
    return go_text.replace(PROMPT, prompt)


def stop_sequences(template: Template, tokenizer: Any = None) -> list[str]:
    stops = list(template.stop_markers)
    eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
    if eos and eos not in stops:
        stops.append(eos)
    return stops


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def modelfile(gguf_name: str, template: Template, tokenizer: Any, *, num_ctx: int, num_predict: int = 256) -> str:
    lines = [f"# Written by heed export: the model, heed's template {template.name!r}, its stop sequences,",
             "# greedy decoding. Use: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}",
             f'TEMPLATE """{go_template(template, tokenizer)}"""']
    lines += [f"PARAMETER stop {_quoted(s)}" for s in stop_sequences(template, tokenizer)]
    lines += ["PARAMETER temperature 0", f"PARAMETER num_ctx {num_ctx}", f"PARAMETER num_predict {num_predict}"]
    return "\n".join(lines) + "\n"
