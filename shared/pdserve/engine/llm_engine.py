"""The serving engine every worker runs: requests in, one scheduled step at a time, outputs out.

Prefill workers add requests with `hold_kv=True`: after the first token the request parks
with its blocks, `export_kv` hands its KV out and `release_kv` frees them. Decode workers
`import_kv` such exports and continue. The colocated worker and the offline `LLM` just add
requests and step.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from pdserve.engine.attention import ATTN_IMPLEMENTATION
from pdserve.engine.bad_words import bad_words_token_ids, banned_next
from pdserve.engine.block_manager import BlockManager
from pdserve.engine.choice_grammar import ChoiceState
from pdserve.engine.config import EngineConfig, check_max_model_len
from pdserve.engine.gpu_memory import activation_reserve, kv_pool_bytes
from pdserve.engine.grammar_constraint import GrammarConstraint, MaskCache
from pdserve.engine.host_memory import keep_freed_memory
from pdserve.engine.json_grammar import JsonState
from pdserve.engine.json_schema import compiled_schema
from pdserve.engine.kv_transfer import DTYPE_NAMES, KvExport, KvLayout
from pdserve.engine.model_runner import ModelRunner, PromptHidden
from pdserve.engine.regex_nfa import RegexState
from pdserve.engine.sampler import Constraint, Sampler, score_prompt
from pdserve.engine.scheduler import Scheduler
from pdserve.engine.schema_grammar import SchemaState
from pdserve.engine.sequence import Grammar, Sequence, SequenceStatus
from pdserve.engine.stop_checker import StopChecker
from pdserve.engine.thinking_grammar import thinking_first
from pdserve.engine.token_texts import TokenTexts
from pdserve.errors import InvalidRequestError, KvCapacityError
from pdserve.kernels import gather_kv_blocks, scatter_kv_blocks
from pdserve.models import LoadedModel, load_model
from pdserve.outputs import RequestOutput
from pdserve.sampling_params import SamplingParams

Prompt = str | list[int]


class LLMEngine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None, seed: int | None = 0) -> None:
        self.loaded = loaded
        self.config = config = config or EngineConfig()
        self.tokenizer = loaded.tokenizer
        layout = KvLayout(
            model_fingerprint=loaded.fingerprint,
            dtype=DTYPE_NAMES[loaded.dtype],
            num_layers=loaded.num_layers,
            num_kv_heads=loaded.num_kv_heads,
            head_dim=loaded.head_dim,
            block_size=config.block_size,
        )
        self.kv_layout = layout
        num_blocks = self._pool_blocks(loaded, config, layout.bytes_per_token)
        # A lone request must always fit in the pool, or preemption could never make progress.
        pool_tokens = num_blocks * config.block_size
        check_max_model_len(config.max_model_len, loaded.max_model_len, pool_tokens)
        self.max_model_len = min(loaded.max_model_len, config.max_model_len or loaded.max_model_len, pool_tokens)
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.block_manager, config.max_num_batched_tokens, config.max_num_seqs, config.scheduling_policy
        )
        self.runner = ModelRunner(loaded, num_blocks, config.block_size)
        if self.runner.device.type == "cpu":
            keep_freed_memory()
        self.sampler = Sampler(self.runner.device, seed)
        self.stop_checker = StopChecker(self.tokenizer, loaded.eos_token_ids, self.max_model_len)
        self.token_texts = TokenTexts(self.tokenizer)  # grammars check candidates by their text
        self.grammar_masks = MaskCache(self.loaded.vocab_size)  # allowed tokens of grammar states seen
        self.requests: dict[str, Sequence] = {}
        self._pending: list[RequestOutput] = []  # outputs produced outside step() (abort, import)

    @staticmethod
    def _pool_blocks(loaded: LoadedModel, config: EngineConfig, bytes_per_token: int) -> int:
        """KV blocks: the configured count or bytes, or a share of the GPU's memory."""
        if config.gpu_memory_utilization is None:
            return config.resolve_num_blocks(bytes_per_token)
        device = next(loaded.model.parameters()).device
        if device.type != "cuda":
            raise InvalidRequestError(
                f"gpu_memory_utilization sizes the KV cache on a CUDA device, and this model is on {device}; "
                "use --kv-cache-memory-bytes or --num-kv-blocks"
            )
        free, total = torch.cuda.mem_get_info(device)
        hf = loaded.config
        reserve = activation_reserve(
            config.max_num_batched_tokens,
            config.max_num_seqs,
            int(hf.hidden_size),
            int(getattr(hf, "intermediate_size", 4 * hf.hidden_size)),
            int(hf.vocab_size),
            loaded.dtype.itemsize,
        )
        pool = kv_pool_bytes(config.gpu_memory_utilization, total, free, reserve)
        return max(1, pool // (bytes_per_token * config.block_size))

    @classmethod
    def from_model(
        cls,
        model: str | Path | None = None,
        *,
        dtype: str | torch.dtype = "auto",
        device: str = "cpu",
        config: EngineConfig | None = None,
        seed: int | None = 0,
    ) -> LLMEngine:
        loaded = load_model(model, dtype=dtype, device=device, attn_implementation=ATTN_IMPLEMENTATION)
        return cls(loaded, config, seed)

    # -- requests ---------------------------------------------------------------------------

    def tokenize(self, prompt: Prompt, truncate: int | None = None) -> list[int]:
        """Token ids of a prompt given as text or ids, validated against this model; with
        `truncate` (SamplingParams.truncate_prompt_tokens) only the last that many."""
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("prompt is empty")
            ids = list(self.tokenizer(prompt).input_ids)
        elif isinstance(prompt, list):
            ids = prompt
        else:
            raise InvalidRequestError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            raise InvalidRequestError("prompt has no tokens")
        vocab = self.loaded.vocab_size
        # The common case at C speed (a long prompt is thousands of ids, checked before its ack);
        # otherwise the loop names the first bad id.
        if not (set(map(type, ids)) <= {int} and min(ids) >= 0 and max(ids) < vocab):
            for t in ids:
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
                    raise InvalidRequestError(f"token id {t!r} is outside the vocabulary [0, {vocab})")
        if truncate is not None:
            ids = ids[-truncate:]
        if len(ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"prompt has {len(ids)} tokens but the context is {self.max_model_len} tokens "
                "(prompt plus at least one generated token must fit); shorten the prompt"
            )
        return list(ids)

    def check_params(self, params: SamplingParams) -> None:
        """Validate `params`, and what only this model can tell (logit_bias names real token ids)."""
        params.validate()
        if params.priority and not self.scheduler.by_priority:
            raise InvalidRequestError(
                f"priority {params.priority} needs an engine scheduling by priority (--scheduling-policy priority); "
                "this one serves first come, first served"
            )
        vocab = self.loaded.vocab_size
        for token in params.logit_bias:
            if token >= vocab:
                raise InvalidRequestError(f"logit_bias: token id {token} is outside the vocabulary [0, {vocab})")
        outside = [t for t in params.allowed_token_ids or [] if t >= vocab]
        if outside:
            raise InvalidRequestError(
                f"allowed_token_ids: token id {outside[0]} is outside the vocabulary [0, {vocab})"
            )

    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams,
        *,
        hold_kv: bool = False,
        resume_token_ids: list[int] | None = None,
    ) -> Sequence:
        """Queue a request. `resume_token_ids` are output tokens it already produced elsewhere
        (a migrated request): they are recomputed with the prompt, count towards `max_tokens`
        and stop checks, and generation continues at output index len(resume_token_ids), with
        the same per-step seeds it would have had."""
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        self.check_params(params)
        seq = Sequence(request_id, self.tokenize(prompt, params.truncate_prompt_tokens), params, hold_kv=hold_kv)
        if resume_token_ids:
            resumed = self.check_resume(seq.num_prompt_tokens, resume_token_ids, params)
            seq.token_ids.extend(resumed)
            if params.logprobs:
                # Placeholders: the resumed tokens were delivered (with their logprobs) already.
                seq.logprobs.extend([0.0] * len(resumed))
                if params.top_logprobs:
                    seq.top_logprobs.extend({} for _ in resumed)
        self._start_grammar(seq)
        self._start_bad_words(seq)
        self.requests[request_id] = seq
        self.scheduler.add(seq)
        return seq

    def check_resume(self, num_prompt_tokens: int, resume_token_ids: list[int], params: SamplingParams) -> list[int]:
        """Validate the already-generated tokens of a migrated request (read-only)."""
        resumed = self.tokenize(list(resume_token_ids))
        if len(resumed) >= params.max_tokens:
            raise InvalidRequestError(
                f"{len(resumed)} tokens already generated leave nothing to do under max_tokens={params.max_tokens}"
            )
        if num_prompt_tokens + len(resumed) >= self.max_model_len:
            raise InvalidRequestError(
                f"prompt plus {len(resumed)} generated tokens fill the context of {self.max_model_len} tokens"
            )
        return resumed

    def abort_request(self, request_id: str) -> bool:
        """Stop a request wherever it is and free everything it holds. False if unknown."""
        seq = self.requests.get(request_id)
        if seq is None:
            return False
        self._finish(seq, "abort")
        self._pending.append(self._output(seq, []))
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work() or bool(self._pending)

    # -- stepping -----------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one scheduled batch. Returns an output for every request that gained a token or
        finished (including ones finished by abort or import since the last step)."""
        outputs, self._pending = self._pending, []
        batch = self.scheduler.schedule()
        if not batch:
            return outputs
        step = self.runner.run(batch)
        for seq, num_new in batch.entries:
            seq.num_computed_tokens += num_new
            self.block_manager.commit_full_blocks(seq)
        for scored in step.prompt_hidden:
            self._score_prompt(scored)
        sampling = step.sampling
        if not sampling:
            return outputs
        params = [s.params for s in sampling]
        # Penalties and logit bias read each row's tokens, min_tokens its stop tokens, bad_words
        # its output's last tokens; nobody
        # else pays for collecting them.
        histories = suppressed = None
        if any(p.adjusts_logits for p in params):
            histories = [(s.token_ids, s.num_prompt_tokens) for s in sampling]
        if any(p.min_tokens or p.bad_words for p in params):
            suppressed = [
                self.stop_checker.suppressed(s) + banned_next(s.bad_words_ids, s.output_token_ids)
                if s.bad_words_ids
                else self.stop_checker.suppressed(s)
                for s in sampling
            ]
        steps = [s.num_output_tokens for s in sampling]
        constraints = None
        if any(s.grammar is not None for s in sampling):
            constraints = [
                self._grammar_constraint(s.grammar, s.params) if s.grammar is not None else None for s in sampling
            ]
        result = self.sampler.sample(step.logits, params, steps, histories, suppressed, constraints)
        for row, seq in enumerate(sampling):
            token = result.token_ids[row]
            seq.token_ids.append(token)
            if seq.grammar is not None:
                # A token no candidate could replace (none allowed at all) leaves the state as it was.
                seq.grammar = seq.grammar.feed(self.token_texts(token)) or seq.grammar
            if seq.params.logprobs and result.logprobs is not None:
                seq.logprobs.append(result.logprobs[row])
                if seq.params.top_logprobs and result.top_logprobs is not None:
                    seq.top_logprobs.append(result.top_logprobs[row])
            reason = self.stop_checker.check(seq)
            if reason is not None:
                self._finish(seq, reason)
            elif seq.hold_kv:
                self.scheduler.finish(seq)
                seq.status = SequenceStatus.PARKED
            outputs.append(self._output(seq, [token]))
        return outputs

    def _start_bad_words(self, seq: Sequence) -> None:
        """params.bad_words as this model's token sequences (bad_words.py)."""
        if not seq.params.bad_words:
            return
        encode = partial(self.tokenizer.encode, add_special_tokens=False)
        sequences = bad_words_token_ids(encode, seq.params.bad_words)
        vocab = self.loaded.vocab_size
        if any(t >= vocab for tokens in sequences for t in tokens):
            raise InvalidRequestError(f"bad_words: a word's tokens fall outside the model's vocabulary [0, {vocab})")
        seq.bad_words_ids = sequences

    def _start_grammar(self, seq: Sequence) -> None:
        """JSON mode, structured output and guided choice: the grammar's state after the output
        tokens the request already has (a migrated or handed-off request continues where its
        output is)."""
        p = seq.params
        start: Grammar
        if p.json_schema is not None:
            start, name = SchemaState.start(compiled_schema(str(p.json_schema))), "json_schema"
        elif p.guided_choice is not None:
            start, name = ChoiceState(tuple(p.guided_choice)), "guided_choice"
        elif p.guided_regex is not None:
            start, name = RegexState.start(p.guided_regex), "guided_regex"
        elif p.json_object:
            start, name = JsonState(), "json_object"
        else:
            return
        if p.reasoning_parser is not None:  # the model may think before the grammar holds
            start = thinking_first(start, p.reasoning_parser)
        state = start.feed(self.token_texts.of(seq.output_token_ids))
        if state is None:
            raise InvalidRequestError(f"{name}: the tokens already generated do not fit it")
        seq.grammar = state

    def _grammar_constraint(self, state: Grammar, params: SamplingParams) -> Constraint:
        # eos may end the output where the value may be whole (a number at the top level has no
        # closing character); a closed object ends it anyway.
        eos = self.stop_checker.eos_token_ids if state.can_end and not params.ignore_eos else frozenset()
        return GrammarConstraint(state, self.token_texts, eos, self.loaded.vocab_size, self.grammar_masks)

    def _score_prompt(self, scored: PromptHidden) -> None:
        seq, first = scored.seq, scored.first
        targets = seq.prompt_token_ids[first + 1 : first + 1 + scored.hidden.shape[0]]
        k = seq.params.prompt_logprobs or 0
        logprobs, tops, ranks = score_prompt(self.runner.lm_head, scored.hidden, targets, k)
        seq.prompt_logprobs += logprobs
        seq.prompt_ranks += ranks
        if k:
            seq.prompt_top_logprobs += tops

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.finish(seq)
        self.block_manager.release(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self.requests.pop(seq.request_id, None)

    def _output(self, seq: Sequence, new_tokens: list[int]) -> RequestOutput:
        finished = seq.finish_reason is not None
        return RequestOutput(
            request_id=seq.request_id,
            prompt_token_ids=seq.prompt_token_ids,
            token_ids=seq.output_token_ids,
            new_token_ids=new_tokens,
            text=self.stop_checker.final_text(seq) if finished else "",
            finish_reason=seq.finish_reason,
            stop_reason=seq.stop_reason if finished else None,
            logprobs=list(seq.logprobs) if seq.params.logprobs else None,
            top_logprobs=list(seq.top_logprobs) if seq.params.top_logprobs else None,
            **(self._prompt_scores(seq, new_tokens) if seq.params.prompt_logprobs is not None else {}),
            num_cached_tokens=seq.num_cached_tokens,
        )

    @staticmethod
    def _prompt_scores(seq: Sequence, new_tokens: list[int]) -> dict[str, Any]:
        """The prompt's logprobs, vLLM's way (None for the first token, which nothing scores), in
        the output of the request's first token and in its final output only: they are complete
        once the first token is sampled, and copying them into every step's output would cost
        per step what the prompt is long."""
        k = seq.params.prompt_logprobs
        first_token = len(new_tokens) == seq.num_output_tokens > 0
        if k is None or not (first_token or seq.finish_reason is not None):
            return {}
        if len(seq.prompt_logprobs) != seq.num_prompt_tokens - 1:
            return {}  # not scored here: this engine imported the request's KV (decode worker)
        scores: dict[str, Any] = {"prompt_logprobs": [None, *seq.prompt_logprobs]}
        scores["prompt_ranks"] = [None, *seq.prompt_ranks]
        if k:
            scores["prompt_top_logprobs"] = [None, *seq.prompt_top_logprobs]
        return scores

    # -- KV export / import ---------------------------------------------------------------

    def export_kv(self, request_id: str) -> KvExport:
        """The KV of a parked request's prompt, per layer and contiguous. Blocks stay held
        until `release_kv`."""
        seq = self.requests.get(request_id)
        if seq is None or seq.status is not SequenceStatus.PARKED:
            raise InvalidRequestError(f"request {request_id!r} is not parked after prefill")
        num_tokens = seq.num_computed_tokens
        assert num_tokens == seq.num_tokens - 1  # everything but the token just sampled
        block_ids = torch.tensor(seq.block_table, dtype=torch.int64, device=self.runner.device)
        layers = [
            gather_kv_blocks(k, v, block_ids, num_tokens)
            for k, v in zip(self.runner.k_caches, self.runner.v_caches, strict=True)
        ]
        return KvExport(
            request_id=request_id,
            layout=self.kv_layout,
            prompt_token_ids=seq.token_ids[:num_tokens],
            first_token=seq.token_ids[-1],
            resumed_tokens=seq.num_output_tokens - 1,
            first_logprob=seq.logprobs[-1] if seq.logprobs else None,
            first_top_logprobs=seq.top_logprobs[-1] if seq.top_logprobs else None,
            layers=layers,
        )

    def release_kv(self, request_id: str) -> bool:
        """Free a parked request's blocks (after its KV was pushed, or when the push failed)."""
        seq = self.requests.get(request_id)
        if seq is None or seq.status is not SequenceStatus.PARKED:
            return False
        self._finish(seq, "prefilled")
        return True

    def import_kv(self, export: KvExport, params: SamplingParams, request_id: str | None = None) -> Sequence:
        """Continue a request prefilled elsewhere: validate the KV, copy it into fresh blocks and
        join the running batch. Raises KvLayoutMismatchError, InvalidRequestError or
        KvCapacityError (no room: the caller should try another worker)."""
        request_id = request_id or export.request_id
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        self.check_params(params)
        export.validate(self.kv_layout)
        prompt = self.tokenize(list(export.prompt_token_ids))
        first = self.tokenize([export.first_token])[0]
        if not 0 <= export.resumed_tokens < len(prompt):
            raise InvalidRequestError(f"resumed_tokens {export.resumed_tokens} out of range for {len(prompt)} tokens")
        if export.resumed_tokens + 1 > params.max_tokens:
            raise InvalidRequestError(
                f"{export.resumed_tokens + 1} tokens already exceed max_tokens={params.max_tokens}"
            )
        split = len(prompt) - export.resumed_tokens
        seq = Sequence(request_id, prompt[:split], params)
        seq.token_ids.extend(prompt[split:])
        seq.token_ids.append(first)
        if params.logprobs:
            seq.logprobs.extend([0.0] * export.resumed_tokens)  # delivered before the migration
            if export.first_logprob is not None:
                seq.logprobs.append(float(export.first_logprob))
            if params.top_logprobs:
                seq.top_logprobs.extend({} for _ in range(export.resumed_tokens))
                seq.top_logprobs.append(dict(export.first_top_logprobs or {}))
        self._start_grammar(seq)
        self._start_bad_words(seq)
        reason = self.stop_checker.check(seq)
        if reason is not None:
            seq.status = SequenceStatus.FINISHED
            seq.finish_reason = reason
            self._pending.append(self._output(seq, []))
            return seq
        if not self.block_manager.ensure_slots(seq, len(prompt)):
            raise KvCapacityError(
                f"no room for {len(prompt)} tokens of KV ({self.block_manager.num_free_blocks} free blocks)"
            )
        block_ids = torch.tensor(seq.block_table, dtype=torch.int64, device=self.runner.device)
        for kv, k, v in zip(export.layers, self.runner.k_caches, self.runner.v_caches, strict=True):
            scatter_kv_blocks(kv.to(self.runner.device, non_blocking=True), k, v, block_ids)
        seq.num_computed_tokens = len(prompt)
        self.block_manager.commit_full_blocks(seq)
        self.requests[request_id] = seq
        self.scheduler.add_running(seq)
        return seq

    # -- introspection ------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def kv_blocks_used(self) -> int:
        return self.block_manager.num_used_blocks

    @property
    def kv_blocks_total(self) -> int:
        return self.block_manager.num_blocks

    def check_integrity(self) -> None:
        self.block_manager.check_integrity(self.requests.values())
