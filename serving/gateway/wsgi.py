"""WSGI entry point for gunicorn: `gunicorn -c serving/gunicorn.conf.py serving.gateway.wsgi:app`."""

from serving.gateway import create_app
from serving.gateway.logging_setup import configure_logging

configure_logging()  # LOG_FORMAT (json | text) and LOG_LEVEL from the settings
app = create_app()
