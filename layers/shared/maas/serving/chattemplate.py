"""Chat templates, rendered as ``transformers``' ``apply_chat_template`` renders them.

A causal LM's folder carries its chat template (``chat_template.jinja``, or inside
``tokenizer_config.json`` in older folders): Jinja source that turns a list of messages into the
prompt text. transformers renders it in Jinja's immutable sandbox with ``trim_blocks`` and
``lstrip_blocks``, the ``loopcontrols`` extension, its own ``tojson`` (no HTML escaping),
``raise_exception`` and ``strftime_now``, and the tokenizer's special tokens (``bos_token``,
``eos_token``, ...) as variables; the text is then tokenized without adding special tokens.
This module does the same, so the fine-tuning job (which loads this file by path, as it loads
textprep.py) and the inference function render one chat identically; tests pin it against
transformers on every supported architecture.

Standard library + jinja2 only, and no imports from ``maas``.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

ROLES = ("system", "user", "assistant", "tool", "developer")


class ChatTemplateError(ValueError):
    """The template refused the conversation (its raise_exception), or failed to render."""


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def compile_template(source: str) -> Any:
    """The compiled template (jinja2.Template), cached per source text."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` renders its body (transformers uses it to
        mark assistant tokens; rendering is unchanged)."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

        def _render(self, caller: Any) -> str:
            return str(caller())

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[Generation, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the model's chat template does not compile: {e}") from None


def render(
    source: str,
    messages: list[dict[str, Any]],
    special_tokens: dict[str, str],
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for messages, as apply_chat_template(..., tokenize=False) gives it."""
    import jinja2

    template = compile_template(source)
    try:
        return str(
            template.render(
                **special_tokens,
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
            )
        )
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the model's chat template failed: {e}") from None


def template_of(tokenizer_config: dict[str, Any], jinja_file: str | None) -> str | None:
    """The folder's default chat template: chat_template.jinja, else tokenizer_config.json's
    chat_template (a string, or a list of named templates: the one named "default")."""
    if jinja_file:
        return jinja_file
    value = tokenizer_config.get("chat_template")
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list):
        named = {str(t.get("name")): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default")
        return str(chosen) if chosen else None
    return None
