"""`python -m qwenproxy ...`: the command line (see qwenproxy.cli)."""

from qwenproxy.cli import main

raise SystemExit(main())
