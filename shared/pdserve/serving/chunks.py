"""Turning engine outputs into TokenChunk stream messages."""

from __future__ import annotations

from pdserve.outputs import RequestOutput
from pdserve.protocol import TokenChunk
from pdserve.protocol.top_logprobs import top_to_wire


def chunk_from_output(out: RequestOutput, worker_id: str, index_offset: int = 0) -> TokenChunk:
    """The chunk for one step's output. `index_offset` shifts indices when this engine's
    request started mid-stream (a decode worker's request already holds the first token)."""
    start = len(out.token_ids) - len(out.new_token_ids)
    logprobs = out.logprobs[start:] if out.logprobs is not None else None
    top_ids, top_logprobs = top_to_wire(out.top_logprobs[start:]) if out.top_logprobs is not None else (None, None)
    chunk = TokenChunk(
        request_id=out.request_id,
        index=start + index_offset,
        token_ids=list(out.new_token_ids),
        worker_id=worker_id,
        logprobs=logprobs,
        finish_reason=out.finish_reason,
        text=out.text if out.finished else None,
        prompt_tokens=len(out.prompt_token_ids),
        cached_tokens=out.num_cached_tokens,
        top_token_ids=top_ids,
        top_logprobs=top_logprobs,
        stop_reason=out.stop_reason,
    )
    if start == 0 and out.prompt_logprobs is not None:
        # Output index 0's chunk scores the prompt (entry 0, the first token's None, stays home).
        chunk.prompt_logprobs = [lp for lp in out.prompt_logprobs[1:] if lp is not None]
        if out.prompt_ranks is not None:
            chunk.prompt_ranks = [r for r in out.prompt_ranks[1:] if r is not None]
        if out.prompt_top_logprobs is not None:
            tops = [top for top in out.prompt_top_logprobs[1:] if top is not None]
            chunk.prompt_top_token_ids, chunk.prompt_top_logprobs = top_to_wire(tops)
    return chunk


def error_chunk(request_id: str, worker_id: str, message: str, code: int, index: int = 0) -> TokenChunk:
    return TokenChunk(
        request_id=request_id,
        index=index,
        token_ids=[],
        worker_id=worker_id,
        finish_reason="error",
        error=message,
        error_code=code,
    )
