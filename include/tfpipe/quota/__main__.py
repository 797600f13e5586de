"""python -m tfpipe.quota: see tfpipe.quota.cli."""

from tfpipe.quota.cli import main

raise SystemExit(main())
