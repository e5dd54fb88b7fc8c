"""A request run the way a disaggregated cluster runs it, in-process: prefill on one engine
(KV held, exported, released), the rest on another that imports it."""

from __future__ import annotations

from pdserve.engine.llm_engine import LLMEngine
from pdserve.outputs import RequestOutput
from pdserve.sampling_params import SamplingParams


def handed_off(prefill: LLMEngine, decode: LLMEngine, prompt: str, params: SamplingParams) -> RequestOutput:
    """The finished output of `prompt` prefilled on `prefill` and decoded on `decode`."""
    prefill.add_request("r", prompt, params, hold_kv=True)
    while prefill.scheduler.has_work():
        prefill.step()
    export = prefill.export_kv("r")
    prefill.release_kv("r")
    decode.import_kv(export, params)
    done = {}
    while decode.has_unfinished():
        done.update({o.request_id: o for o in decode.step() if o.finished})
    return done["r"]
