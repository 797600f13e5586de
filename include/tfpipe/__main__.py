"""`python -m tfpipe <stage> [--option value ...]`: the one command line of every ML stage."""

from tfpipe.stages import main

if __name__ == "__main__":
    raise SystemExit(main())
