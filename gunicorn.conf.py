"""gunicorn settings for `gunicorn -c gunicorn.conf.py wsgi:app` (see Procfile).

The same settings `python -m qwenproxy serve` uses: gevent workers, bind from HOST/PORT,
WEB_CONCURRENCY workers, GRACEFUL_TIMEOUT for in-flight requests on shutdown.
"""

import sys

from qwenproxy.config import Config, ConfigError
from qwenproxy.serving import gunicorn_settings

try:
    globals().update(gunicorn_settings(Config.from_env()))
except ConfigError as exc:
    sys.exit(f"qwenproxy: configuration error: {exc}")
