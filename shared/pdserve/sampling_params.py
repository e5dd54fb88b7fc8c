"""Per-request sampling parameters, validated where they enter pdserve."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pdserve.engine.json_schema import schema_text
from pdserve.engine.regex_nfa import compile_regex
from pdserve.errors import InvalidRequestError

# Limits that keep one request from tying up a worker; the HTTP layer applies its own as well.
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_BAD_WORDS = 1024  # vLLM sets none; each is checked against the output every step
MAX_TOP_K = 1 << 20
PRIORITY_BOUND = 1 << 31  # request priorities are 32-bit signed integers: [-2^31, 2^31)
# Most alternatives per token that `top_logprobs` may ask for: OpenAI's cap for chat, and vLLM's
# default max_logprobs. Each costs a few bytes per token on the wire and a decode in the router.
MAX_TOP_LOGPROBS = 20
# Penalty ranges: OpenAI's for presence and frequency; repetition (vLLM's and Hugging Face's
# multiplicative penalty, 1 = off) must be positive, and past 100 it means nothing more.
MAX_PRESENCE_FREQUENCY_PENALTY = 2.0
MAX_REPETITION_PENALTY = 100.0
# logit_bias: OpenAI's value range; entries per request bounded like stop strings are.
MAX_LOGIT_BIAS = 100.0
MAX_LOGIT_BIAS_ENTRIES = 1024
# n, and over HTTP prompts x n per request: each choice holds an engine request (and in a
# cluster a task and a queue).
MAX_CHOICES = 256
# guided_choice: the texts travel with every task of the request, like a JSON schema.
MAX_GUIDED_CHOICES = 1024
# allowed_token_ids: far above any vocabulary a request would list, far below the body limit.
MAX_ALLOWED_TOKEN_IDS = 1 << 18
MAX_GUIDED_CHOICE_CHARS = 32_768
# What constrains the output; a request takes at most one.
GRAMMAR_FIELDS = ("json_object", "json_schema", "guided_choice", "guided_regex")
# With a grammar: the model thinks first (<think>...</think>, read as these parsers of vLLM read
# it) and the grammar holds after (engine/thinking_grammar.py).
REASONING_PARSERS = ("deepseek_r1", "qwen3")
INT64_MIN = -(1 << 63)


def choice_seed(seed: int | None, choice: int) -> int | None:
    """Choice i samples with seed + i (wrapped into int64), so choice 0 equals the same request
    with n=1; the router's choices and LLM.generate's agree."""
    if seed is None:
        return None
    return (seed + choice - INT64_MIN) % (1 << 64) + INT64_MIN


GREEDY_BELOW_TEMPERATURE = 1e-5
# max_tokens=None (vLLM's spelling for "until the context ends"): the engine's stop checker ends
# every sequence at max_model_len anyway, so any count at least that long means the same.
UNTIL_CONTEXT_END = 2**31 - 1


@dataclass(slots=True)
class SamplingParams:
    """How to pick the tokens of one request.

    temperature 0 means greedy (argmax). top_k <= 0 and top_p == 1 disable those filters.
    `min_p` (vLLM's and Hugging Face's, in [0, 1]; 0 disables) then drops every token less likely
    than min_p times the most likely one, applied after top-k and top-p as Hugging Face does.
    A seed makes a sampled request reproducible whatever else shares its batch and whichever
    worker runs each step. `logprobs=True` returns the log-probability of each chosen token
    under the model's raw distribution (before temperature, top-k and top-p); `top_logprobs=k`
    (at most MAX_TOP_LOGPROBS, and it implies `logprobs`) also returns the k most likely tokens
    at each position under that same distribution, best first. vLLM's spelling is accepted too:
    `logprobs=None` is False, 0 is the chosen token's logprob only, and a count k > 0 is
    `top_logprobs=k`. `presence_penalty` and `frequency_penalty` (OpenAI's, in [-2, 2]: subtracted
    once per token already generated, or once if generated at all) and `repetition_penalty`
    (vLLM's and Hugging Face's: the logit of any token in the prompt or the output is divided by
    it when positive, multiplied when negative) change the distribution sampled from, and
    `logit_bias` ({token id: bias in [-100, 100]}) is added to it after them, and
    `allowed_token_ids` (vLLM's) rules out every other token; logprobs stay those of the raw
    distribution. `min_tokens` (vLLM's) keeps eos and `stop_token_ids` from being
    sampled, and stop strings from matching, until that many tokens are out. `n` completions per
    prompt (LLM.generate; choice i samples with seed + i when a seed is set, as over HTTP) come
    back as the prompt's `outputs`; an engine request is always one sequence. `json_object`
    (OpenAI's JSON mode) only lets tokens through that keep the output one JSON object, and ends
    the request when the object closes. `json_schema` (structured output: a JSON Schema, as a
    dict or its JSON text; kept as compact JSON text) only lets tokens through that keep the
    output a value the schema accepts, and ends the request when nothing but the end may follow;
    docs/engine.md lists the keywords enforced, and the others are refused rather than ignored.
    `guided_choice` (vLLM's `choice`: a list of texts) makes the output exactly one of them, and
    `guided_regex` (vLLM's `regex`) a whole match of the pattern (syntax: engine/regex_nfa.py).
    `truncate_prompt_tokens=k` (vLLM's) keeps only the prompt's last k tokens.
    With one of those, `reasoning_parser` ("deepseek_r1" or "qwen3") lets a reasoning model write
    its `<think>` block first; the grammar holds from where the parser says the answer starts.
    `prompt_logprobs=k` (None: not wanted) scores the prompt as vLLM's does: the logprob of each
    prompt token after the ones before it, and its k most likely alternatives; a request that
    asks for them is not served from the prefix cache, since cached tokens are not run through
    the model. As in vLLM, `max_tokens=None` generates until the
    context ends, and `stop=None` / `stop_token_ids=None` mean none. `skip_special_tokens`
    (vLLM's, default True) leaves special tokens (eos, chat markers) out of the text; False keeps
    them, and stop strings then match them too. `priority` (vLLM's request priority, which pdserve
    carries here so that it travels with the request to every worker) orders requests on an
    engine built with `scheduling_policy="priority"`: lower values first, ties by arrival; an
    engine scheduling first come, first served refuses any other value than 0, as vLLM does.
    `bad_words` (vLLM's) are words the output must never contain, as the model's tokens: each
    word, and its spelling after a space when that is a word of its own (engine/bad_words.py).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    top_logprobs: int = 0
    prompt_logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    allowed_token_ids: list[int] | None = None
    min_tokens: int = 0
    n: int = 1
    json_object: bool = False
    json_schema: str | dict[str, Any] | bool | None = None
    guided_choice: list[str] | None = None
    guided_regex: str | None = None
    reasoning_parser: str | None = None
    truncate_prompt_tokens: int | None = None
    priority: int = 0
    bad_words: list[str] | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def adjusts_logits(self) -> bool:
        """Penalties or a logit bias change the distribution this request samples from."""
        return bool(
            self.presence_penalty
            or self.frequency_penalty
            or self.repetition_penalty != 1.0
            or self.logit_bias
            or self.allowed_token_ids is not None
        )

    @property
    def greedy(self) -> bool:
        # Below 1e-5 the scaled logits overflow float32 and the distribution is a point mass
        # anyway: such a temperature is greedy (as in vLLM).
        return self.temperature < GREEDY_BELOW_TEMPERATURE

    def _validate_logprobs(self) -> None:
        top = self.top_logprobs
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise InvalidRequestError(f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {top!r}")
        wanted = self.logprobs
        if wanted is None:
            wanted = False
        elif not isinstance(wanted, bool):
            # vLLM's count of top alternatives: 0 is the chosen token's logprob alone.
            if not isinstance(wanted, int) or not 0 <= wanted <= MAX_TOP_LOGPROBS:
                raise InvalidRequestError(
                    f"logprobs must be a boolean or a count of top alternatives in [0, {MAX_TOP_LOGPROBS}], "
                    f"got {wanted!r}"
                )
            if wanted and top and wanted != top:
                raise InvalidRequestError(f"logprobs={wanted} and top_logprobs={top} ask for different counts")
            top = top or wanted
            wanted = True
        self.logprobs = wanted or top > 0
        self.top_logprobs = top
        prompt = self.prompt_logprobs
        if prompt is not None and (
            isinstance(prompt, bool) or not isinstance(prompt, int) or not 0 <= prompt <= MAX_TOP_LOGPROBS
        ):
            raise InvalidRequestError(
                f"prompt_logprobs must be None or an integer in [0, {MAX_TOP_LOGPROBS}], got {prompt!r}"
            )

    def _validate_adjustments(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not abs(value) <= MAX_PRESENCE_FREQUENCY_PENALTY
            ):
                raise InvalidRequestError(f"{name} must be in [-2, 2], got {value!r}")
            setattr(self, name, float(value))
        rp = self.repetition_penalty
        if isinstance(rp, bool) or not isinstance(rp, (int, float)) or not 0.0 < rp <= MAX_REPETITION_PENALTY:
            raise InvalidRequestError(f"repetition_penalty must be in (0, {MAX_REPETITION_PENALTY:g}], got {rp!r}")
        self.repetition_penalty = float(rp)
        if self.logit_bias is None:
            self.logit_bias = {}
        if not isinstance(self.logit_bias, dict) or len(self.logit_bias) > MAX_LOGIT_BIAS_ENTRIES:
            raise InvalidRequestError(
                f"logit_bias must be a map of at most {MAX_LOGIT_BIAS_ENTRIES} token ids to biases"
            )
        bias: dict[int, float] = {}
        for key, value in self.logit_bias.items():
            # Token ids as ints, or as the decimal strings JSON and msgpack maps carry them as.
            token = int(key) if isinstance(key, str) and key.isdecimal() and len(key) < 12 else key
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise InvalidRequestError(f"logit_bias keys must be token ids, got {key!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= MAX_LOGIT_BIAS:
                raise InvalidRequestError(f"logit_bias values must be in [-100, 100], got {value!r} for {key!r}")
            bias[token] = float(value)
        self.logit_bias = bias
        allowed = self.allowed_token_ids
        if allowed is not None and (
            not isinstance(allowed, list)
            or not 1 <= len(allowed) <= MAX_ALLOWED_TOKEN_IDS
            or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in allowed)
        ):
            raise InvalidRequestError(
                f"allowed_token_ids must be None or a list of 1 to {MAX_ALLOWED_TOKEN_IDS} token ids"
            )

    def validate(self) -> None:
        """Raise InvalidRequestError naming the first bad field."""
        if self.max_tokens is None:
            self.max_tokens = UNTIL_CONTEXT_END
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise InvalidRequestError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not 0.0 <= float(self.temperature) <= 100.0:
            raise InvalidRequestError(f"temperature must be in [0, 100], got {self.temperature!r}")
        self.temperature = float(self.temperature)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k > MAX_TOP_K:
            raise InvalidRequestError(f"top_k must be an integer <= {MAX_TOP_K} (<= 0 disables), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < float(self.top_p) <= 1.0:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p!r}")
        self.top_p = float(self.top_p)
        if isinstance(self.min_p, bool) or not isinstance(self.min_p, (int, float)) or not 0.0 <= self.min_p <= 1.0:
            raise InvalidRequestError(f"min_p must be in [0, 1], got {self.min_p!r}")
        self.min_p = float(self.min_p)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InvalidRequestError(f"seed must be an integer, got {self.seed!r}")
        priority = self.priority
        in_range = isinstance(priority, int) and -PRIORITY_BOUND <= priority < PRIORITY_BOUND
        if isinstance(priority, bool) or not in_range:
            raise InvalidRequestError(f"priority must be an integer in [-2^31, 2^31), got {priority!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidRequestError("stop must be a string or a list of non-empty strings")
        if len(self.stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_STRING_CHARS for s in self.stop):
            raise InvalidRequestError(
                f"at most {MAX_STOP_STRINGS} stop strings of at most {MAX_STOP_STRING_CHARS} characters"
            )
        if not isinstance(self.stop_token_ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids
        ):
            raise InvalidRequestError("stop_token_ids must be a list of non-negative integers")
        self._validate_logprobs()
        self._validate_adjustments()
        if self.bad_words is not None:
            words = self.bad_words
            if (
                not isinstance(words, list)
                or len(words) > MAX_BAD_WORDS
                or not all(isinstance(w, str) and w.strip() and len(w) <= MAX_STOP_STRING_CHARS for w in words)
            ):
                raise InvalidRequestError(
                    f"bad_words must be a list of at most {MAX_BAD_WORDS} words of 1 to {MAX_STOP_STRING_CHARS} "
                    "characters, not only spaces"
                )
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= MAX_CHOICES:
            raise InvalidRequestError(f"n must be an integer in [1, {MAX_CHOICES}], got {self.n!r}")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise InvalidRequestError(f"min_tokens must be a non-negative integer, got {self.min_tokens!r}")
        if self.min_tokens > self.max_tokens:
            raise InvalidRequestError(f"min_tokens {self.min_tokens} is more than max_tokens {self.max_tokens}")
        for name in ("ignore_eos", "include_stop_str_in_output", "json_object", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidRequestError(f"{name} must be a boolean")
        grammars = [n for n in GRAMMAR_FIELDS if getattr(self, n) not in (None, False)]
        if len(grammars) > 1:
            raise InvalidRequestError(f"{' and '.join(grammars)} exclude each other: pick one")
        if self.json_schema is not None:
            self.json_schema = schema_text(self.json_schema)
        if self.guided_choice is not None:
            self._validate_choice()
        cut = self.truncate_prompt_tokens
        if cut is not None and (isinstance(cut, bool) or not isinstance(cut, int) or cut < 1):
            raise InvalidRequestError(f"truncate_prompt_tokens must be None or a positive integer, got {cut!r}")
        if self.reasoning_parser is not None and self.reasoning_parser not in REASONING_PARSERS:
            raise InvalidRequestError(f"reasoning_parser must be None or one of {REASONING_PARSERS}")
        if self.guided_regex is not None:
            if not isinstance(self.guided_regex, str):
                raise InvalidRequestError("guided_regex must be a string")
            compile_regex(self.guided_regex)  # refuses what it cannot enforce, naming it

    def _validate_choice(self) -> None:
        choices = self.guided_choice
        if (
            not isinstance(choices, list)
            or not 1 <= len(choices) <= MAX_GUIDED_CHOICES
            or not all(isinstance(c, str) and c for c in choices)
            or sum(len(c) for c in choices) > MAX_GUIDED_CHOICE_CHARS
        ):
            raise InvalidRequestError(
                f"guided_choice must be a list of 1 to {MAX_GUIDED_CHOICES} non-empty strings, "
                f"{MAX_GUIDED_CHOICE_CHARS} characters in all"
            )
