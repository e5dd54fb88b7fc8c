"""Turning engine outputs into TokenChunk stream messages."""

from __future__ import annotations

from pdserve.outputs import RequestOutput
from pdserve.protocol import TokenChunk


def chunk_from_output(out: RequestOutput, worker_id: str, index_offset: int = 0) -> TokenChunk:
    """The chunk for one step's output. `index_offset` shifts indices when this engine's
    request started mid-stream (a decode worker's request already holds the first token)."""
    start = len(out.token_ids) - len(out.new_token_ids)
    logprobs = out.logprobs[start:] if out.logprobs is not None else None
    return TokenChunk(
        request_id=out.request_id,
        index=start + index_offset,
        token_ids=list(out.new_token_ids),
        worker_id=worker_id,
        logprobs=logprobs,
        finish_reason=out.finish_reason,
        text=out.text if out.finished else None,
        prompt_tokens=len(out.prompt_token_ids),
        cached_tokens=out.num_cached_tokens,
    )


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
