"""`python -m tfpipe <stage> [--option value ...]`: the one command line of every ML stage."""

import logging
import os
import sys

from tfpipe.stages import main

if __name__ == "__main__":
    code = main()
    # The result is out: skip tearing down TensorFlow, Beam and GX module state (1-2 s per stage).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
