"""A checkpoint's own Jinja chat template, rendered the way transformers renders it.

Mirrors transformers 4.57.6 ``utils.chat_template_utils``: ``_compile_jinja_template`` (an
``ImmutableSandboxedEnvironment`` with ``trim_blocks=True, lstrip_blocks=True``, the
``loopcontrols`` extension and the ``{% generation %}`` extension ``AssistantTracker``, the
``tojson`` filter without HTML escaping, the ``raise_exception`` and ``strftime_now`` globals),
``render_jinja_template`` (the template sees ``messages``, ``tools``, ``documents``,
``add_generation_prompt`` and every extra keyword, e.g. the tokenizer's special tokens as
``PreTrainedTokenizerBase.apply_chat_template`` passes them) and ``_render_with_assistant_indices``
(the character spans of the ``{% generation %}`` blocks, what ``return_assistant_tokens_mask``
turns into a token mask).

One deliberate difference: transformers' tracker counts itself active only once some output
was rendered (``is_active`` tests the lists for truth), so a ``{% generation %}`` block that is
the very first output of a template is not tracked there; here it is.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

# transformers' test for a template that supports return_assistant_tokens_mask.
_GENERATION_TAG = re.compile(r"\{\%-?\s*generation\s*-?\%\}")

Span = tuple[int, int]


def has_generation_blocks(source: str) -> bool:
    """Whether ``source`` marks assistant output with ``{% generation %}...{% endgeneration %}``."""
    return bool(_GENERATION_TAG.search(source))


class _AssistantTracker(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body unchanged and, while a
    tracker is active, records the body's (start, end) character span in the whole output.

    The state is per thread (transformers keeps it on the extension): a compiled template is
    cached and shared, and grain preprocesses records on a thread pool."""

    tags: ClassVar[set[str]] = {"generation"}

    def __init__(self, environment: jinja2.Environment):
        super().__init__(environment)
        environment.extend(activate_tracker=self.activate_tracker)
        self._state = threading.local()

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

    @jinja2.pass_eval_context
    def _generation_support(self, context: jinja2.nodes.EvalContext, caller: jinja2.runtime.Macro) -> str:
        rv = caller()
        tracked = getattr(self._state, "tracked", None)
        if tracked is not None:
            blocks, spans = tracked
            start = len("".join(blocks))
            spans.append((start, start + len(rv)))
        return rv

    @contextmanager
    def activate_tracker(self, rendered_blocks: list[str], generation_indices: list[Span]) -> Iterator[None]:
        if getattr(self._state, "tracked", None) is not None:
            raise ValueError("the {% generation %} tracker must not be reused before it is closed")
        self._state.tracked = (rendered_blocks, generation_indices)
        try:
            yield
        finally:
            self._state.tracked = None


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters; transformers replaces it with plain json.dumps.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=32)
def compile_chat_template(source: str) -> jinja2.Template:
    """The compiled template (cached per source string; each has its own environment, so the
    tracker's state is never shared between templates)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_AssistantTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as err:
        raise ValueError(f"chat template does not compile: {err}") from err


def render_chat_template(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    tools: Any = None,
    documents: Any = None,
    **template_kwargs: Any,
) -> tuple[str, list[Span]]:
    """Render one conversation: ``(text, spans)``, ``spans`` being the character spans of the
    ``{% generation %}`` blocks in rendering order (empty when the template has none).

    Raises:
        ValueError: the template fails to render (including its own ``raise_exception``).
    """
    template = compile_chat_template(source)
    blocks: list[str] = []
    spans: list[Span] = []
    try:
        with template.environment.activate_tracker(blocks, spans):
            # One block at a time: a {% generation %} span's start is the length rendered so far.
            output = template.generate(messages=messages, tools=tools, documents=documents,
                                       add_generation_prompt=add_generation_prompt, **template_kwargs)
            for block in output:
                blocks.append(block)  # noqa: PERF402 - the tracker reads `blocks` while rendering
            text = "".join(blocks)
    except jinja2.exceptions.TemplateError as err:
        raise ValueError(f"chat template: {err}") from err
    except (TypeError, AttributeError, KeyError, IndexError, ArithmeticError, RecursionError) as err:
        # The template's own expressions on the caller's data (e.g. `'image' in item` for an
        # item that is not a dict): the conversation does not fit the template.
        raise ValueError(f"chat template cannot render these messages ({type(err).__name__}: {err})") from err
    return text, spans
