"""`python -m kvlib.measure.bench`: how fast kvlib decodes, against transformers and against the weight-streaming floor.

One run on one set of seeded random GPT-2-small weights (fp32, batch 1, CPU unless --device) times whole greedy
generations of the same prompt and the same number of new tokens (no EOS stop): kvlib with a dynamic and a
static cache and without one, and transformers' `generate` with and without its cache (same weights, via
model.to_hf()). Methods take turns within each repeat, so background load hits all of them alike.

The weight-streaming floor is one vector-matrix pass over every weight matrix in the layout kvlib computes with
(the 4L block matrices as `addmm(bias, x, W)` with W (in, out); the LM head as x @ a contiguous (C, V) copy on
CPU, F.linear on GPU): batch-1 decoding must read all of them once per token, so no decode step can be faster.

--out DIR also runs kvlib.measure.timing's sweeps and writes DIR/timing_<slug>.json (device, settings, summary),
DIR/timing_<slug>.csv (every measurement) and the figures DIR/timing_<figure>_<slug>.png.
--quick shrinks everything (for the notebook and the tests); its files carry a "_quick" suffix.
"""
from .cli import main
from .results import device_slug, load_results, report, write_results
from .floor import gelu_alone_us, op_between_gap, weight_pass, weight_streaming_floor
from .runner import FULL_GPU, QUICK, TINY, Settings, headline, hf_generate, run, summarize_run
