"""Test-wide settings for the unit tests and for nbval's notebook runs (kernels inherit this environment)."""
import os

# Every test and every notebook run uses the seeded random GPT-2, whether or not real weights could be loaded,
# so results are identical on every machine and nothing touches the network.
os.environ["KVLIB_RANDOM_WEIGHTS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"


def pytest_collectstart(collector):
    # nbval compares committed outputs with fresh ones; stderr (warnings, tqdm bars, kvlib's notice) varies
    # between machines and versions, so it is shown but never compared.
    if hasattr(collector, "skip_compare"):
        collector.skip_compare = tuple(collector.skip_compare) + ("stderr",)
