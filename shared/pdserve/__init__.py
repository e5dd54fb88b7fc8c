"""pdserve: disaggregated prefill/decode LLM serving.

`from pdserve import LLM, SamplingParams` is the offline API; the services live in
`pdserve.services` and the command line in `pdserve.cli`.
"""

from pdserve.llm import LLM
from pdserve.outputs import RequestOutput
from pdserve.sampling_params import SamplingParams

__all__ = ["LLM", "RequestOutput", "SamplingParams"]
__version__ = "0.1.0"
