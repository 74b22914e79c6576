"""One upstream completions stream read into ``Chunk``s and the ``Finished`` at its end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..base import Chunk, Finished, FinishReason
from ..errors import BackendError, BackendUnavailable
from ..stops import StopMatcher
from .failures import Retryable, event_error
from .http import Stream
from .replicas import ReplicaState
from .wire import MALFORMED, int_field, parse_events, sse_data


@dataclass(slots=True)
class Attempt:
    """What one upstream attempt produced, for the retry decision."""

    chunks: int = 0
    finished: Finished | None = None


async def read_stream(
    state: ReplicaState,
    response: Stream,
    attempt: Attempt,
    stops: StopMatcher | None,
    mark_down: Callable[[ReplicaState, str], None],
) -> AsyncIterator[Chunk]:
    """The stream's text chunks; records the end (or raises) in ``attempt``. ``stops``: the
    client's stop strings, matched here for engines that do not name the one that matched;
    a match ends the read, which closes the stream and so aborts the upstream generation."""
    finish: str | None = None
    stop_sequence: str | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    # Tokens whose text the engine held back (a possible stop string, a partial character):
    # they are counted with the next text that comes.
    pending = 0
    completion = 0
    done = False
    async for batch in sse_data(response):
        # The text of every event in the batch goes on as one chunk, with the tokens up to
        # its last text (those of text-less events after it wait for the next text, as
        # they would one event at a time).
        texts: list[str] = []
        counted = 0
        for event in parse_events(batch):
            # Read on to the end of the body after [DONE] (it comes right after): a response
            # closed early takes its connection with it, and a new one costs milliseconds.
            if done or event == "[DONE]":
                done = True
                continue
            if event is MALFORMED:
                if texts:  # what came before it reaches the client, as it would one by one
                    attempt.chunks += 1
                    yield Chunk("".join(texts), counted)
                raise Retryable(BackendError(f"{state.name} sent a malformed event"))
            if not isinstance(event, dict):
                continue
            if "error" in event:
                if texts:
                    attempt.chunks += 1
                    yield Chunk("".join(texts), counted)
                raise event_error(state, event["error"])
            if isinstance(event.get("usage"), dict):
                usage = event["usage"]
            if isinstance(event.get("timings"), dict):
                timings = event["timings"]
            for choice in event.get("choices") or ():
                if not isinstance(choice, dict):
                    continue
                ids = choice.get("token_ids")
                count = len(ids) if isinstance(ids, list) else 1
                pending += count
                completion += count
                text = choice.get("text")
                if isinstance(text, str) and text and stops is not None:
                    text = stops.feed(text)
                if isinstance(text, str) and text:
                    texts.append(text)
                    counted = pending
                if stops is not None and stops.stopped:
                    finish, stop_sequence = "stop", stops.matched
                    break
                if choice.get("finish_reason"):
                    finish = str(choice["finish_reason"])
                    # vLLM names the stop string that matched (or the stop token's id).
                    matched = choice.get("stop_reason")
                    stop_sequence = matched if isinstance(matched, str) else None
            if stops is not None and stops.stopped:
                break
        if texts:
            attempt.chunks += 1
            yield Chunk("".join(texts), counted)
            pending -= counted
        if stops is not None and stops.stopped:
            break
    if stops is not None and not stops.stopped:
        tail = stops.flush()
        if tail:
            attempt.chunks += 1
            yield Chunk(tail, pending)
    if finish is None:
        # The stream ended without saying how the generation did: the replica went away.
        mark_down(state, "stream ended early")
        raise Retryable(
            BackendError(f"{state.name} closed the stream before the generation finished")
        )
    if finish == "abort":
        raise Retryable(BackendUnavailable(f"{state.name} aborted the generation"))
    if finish == "error":
        raise Retryable(BackendError(f"{state.name} failed during the generation"))
    attempt.finished = _finished(finish, stop_sequence, usage, timings, completion)


def _finished(
    finish: str,
    stop_sequence: str | None,
    usage: dict[str, Any] | None,
    timings: dict[str, Any] | None,
    completion: int,
) -> Finished:
    reason: FinishReason = "length" if finish == "length" else "stop"
    prompt_tokens = int_field(usage, "prompt_tokens")
    completion_tokens = int_field(usage, "completion_tokens")
    details = (usage or {}).get("prompt_tokens_details")
    cached = int_field(details if isinstance(details, dict) else None, "cached_tokens")
    if prompt_tokens is None and timings is not None:
        # A stream closed on a stop string before its usage: llama-server's per-event timings
        # (tokens evaluated + tokens reused from its cache).
        evaluated, reused = int_field(timings, "prompt_n"), int_field(timings, "cache_n")
        if evaluated is not None:
            prompt_tokens = evaluated + (reused or 0)
            cached = reused
    return Finished(
        reason,
        prompt_tokens if prompt_tokens is not None else 0,
        completion_tokens if completion_tokens is not None else completion,
        cached_tokens=cached or 0,
        stop_sequence=stop_sequence,
    )
