from qwenproxy.cli import main

raise SystemExit(main())
