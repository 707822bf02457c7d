"""What a person sees in the terminal: sparse2dense's progress lines, the libraries' warnings only."""

from __future__ import annotations

import logging
import os
import sys
import warnings


def quiet_logs(fmt: str = "%(asctime)s %(message)s") -> None:
    logging.basicConfig(level=logging.WARNING, format=fmt, datefmt="%H:%M:%S")
    logging.getLogger("sparse2dense").setLevel(logging.INFO)
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its own timeout notices; ours bound it anyway
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when `datasets` is imported
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    # transformers reads these when imported; importing it here would cost `s2d plan` seconds.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
