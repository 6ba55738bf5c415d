"""`python -m qwenproxy ...`: the command line (see qwenproxy.cli.main)."""

from qwenproxy.cli.main import main

raise SystemExit(main())
