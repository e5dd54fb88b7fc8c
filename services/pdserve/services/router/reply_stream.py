"""How one chat choice's streamed text becomes deltas: plain content, tool calls, reasoning.

A plain reply streams its text as content. A call forced by name opens with the call's id and
name and streams the arguments. A "required" reply is held until the array of calls is whole,
then goes out as whole calls. An "auto" reply with a tool-call parser streams its text and each
call once its block closes. `finish` returns what is still held and the finish reason.
"""

from __future__ import annotations

from pdserve.services.router.api_responses import CalledFunctionDelta, ChatDelta, ToolCallDelta, ToolCallOut
from pdserve.services.router.reasoning import Piece, ReasoningStream
from pdserve.services.router.tool_calls import ToolPlan, call_id, calls_finish
from pdserve.services.router.tool_parsers import PARSERS, ParsedCall


class PlainReply:
    # A chunk per token batch even when it adds no text (the tokens may end a stop string).
    chunk_every_batch = True

    def opening(self) -> ChatDelta:
        return ChatDelta(role="assistant", content="")

    def empty(self) -> ChatDelta:
        return ChatDelta(content="")

    def push(self, text: str) -> list[ChatDelta]:
        return [ChatDelta(content=text)] if text else []

    def finish(self, finish_reason: str) -> tuple[list[ChatDelta], str | None]:
        return [], finish_reason


class _CallsReply(PlainReply):
    """A reply that may hold tool calls: chunks only for what it adds (or for logprobs)."""

    chunk_every_batch = False

    def empty(self) -> ChatDelta:
        return ChatDelta()


class NamedCallReply(_CallsReply):
    def __init__(self, name: str) -> None:
        self.name = name

    def opening(self) -> ChatDelta:
        call = ToolCallDelta(
            index=0, id=call_id(), type="function", function=CalledFunctionDelta(name=self.name, arguments="")
        )
        return ChatDelta(role="assistant", tool_calls=[call])

    def push(self, text: str) -> list[ChatDelta]:
        if not text:
            return []
        return [ChatDelta(tool_calls=[ToolCallDelta(index=0, function=CalledFunctionDelta(arguments=text))])]


class RequiredCallsReply(_CallsReply):
    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.held = ""

    def push(self, text: str) -> list[ChatDelta]:
        self.held += text
        return []

    def finish(self, finish_reason: str) -> tuple[list[ChatDelta], str | None]:
        content, calls, finish = self.plan.reply(self.held, finish_reason)
        if not calls:  # cut short before the array closed: the text as it is
            return [ChatDelta(content=content)] if content else [], finish
        return [ChatDelta(tool_calls=[_whole(i, call) for i, call in enumerate(calls)])], finish


class ParsedCallsReply(_CallsReply):
    """tool_choice "auto" with a parser for the model's format (tool_parsers.py)."""

    def __init__(self, parser: str) -> None:
        self.parser = PARSERS[parser][1]()
        self.sent = 0  # calls streamed so far: the next one's index

    def push(self, text: str) -> list[ChatDelta]:
        return self._deltas(self.parser.push(text))

    def finish(self, finish_reason: str) -> tuple[list[ChatDelta], str | None]:
        deltas = self._deltas(self.parser.finish())
        return deltas, calls_finish(finish_reason) if self.parser.calls else finish_reason

    def _deltas(self, pieces: list[str | ParsedCall]) -> list[ChatDelta]:
        deltas = []
        for piece in pieces:
            if isinstance(piece, str):
                deltas.append(ChatDelta(content=piece))
            else:
                call = ToolCallDelta(
                    index=self.sent,
                    id=piece.id or call_id(),
                    type="function",
                    function=CalledFunctionDelta(name=piece.name, arguments=piece.arguments),
                )
                deltas.append(ChatDelta(tool_calls=[call]))
                self.sent += 1
        return deltas


class ReasoningReply(PlainReply):
    """The thinking as `reasoning_content` deltas, the rest through `inner` (reasoning.py)."""

    def __init__(self, inner: PlainReply, parser: str) -> None:
        self.inner = inner
        self.splitter = ReasoningStream(parser)
        self.chunk_every_batch = inner.chunk_every_batch

    def opening(self) -> ChatDelta:
        return self.inner.opening()

    def empty(self) -> ChatDelta:
        # A batch that adds no text yet (a partial character, a tag being held) while thinking:
        # an empty reasoning delta, so that no client takes it for the start of the answer.
        return self.inner.empty() if self.splitter.answering else ChatDelta(reasoning_content="")

    def push(self, text: str) -> list[ChatDelta]:
        return self._deltas(self.splitter.push(text))

    def finish(self, finish_reason: str) -> tuple[list[ChatDelta], str | None]:
        deltas = self._deltas(self.splitter.finish())
        tail, finish = self.inner.finish(finish_reason)
        return deltas + tail, finish

    def _deltas(self, pieces: list[Piece]) -> list[ChatDelta]:
        deltas: list[ChatDelta] = []
        for kind, text in pieces:
            deltas += [ChatDelta(reasoning_content=text)] if kind == "reasoning" else self.inner.push(text)
        return deltas


def reply_stream(plan: ToolPlan, reasoning_parser: str | None = None) -> PlainReply:
    """How a choice's text streams; `reasoning_parser` splits off the thinking first, unless the
    reply is a forced call (its grammar holds from the first token, so there is none)."""
    if plan.forced == "named":
        assert plan.name is not None
        return NamedCallReply(plan.name)
    if plan.forced == "required":
        return RequiredCallsReply(plan)
    reply = ParsedCallsReply(plan.parser) if plan.parser is not None else PlainReply()
    return ReasoningReply(reply, reasoning_parser) if reasoning_parser is not None else reply


def _whole(index: int, call: ToolCallOut) -> ToolCallDelta:
    return ToolCallDelta(
        index=index,
        id=call.id,
        type="function",
        function=CalledFunctionDelta(name=call.function.name, arguments=call.function.arguments),
    )
