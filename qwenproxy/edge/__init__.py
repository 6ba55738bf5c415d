"""The edge below the blueprints: who may call (client keys, loopback), what a body may be
(marshmallow schemas), the gunicorn worker that answers what never reaches Flask, and the
non-stream keep-alive."""
