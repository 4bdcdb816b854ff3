"""Single-file Django project that receives ESP tracking webhooks via django-anymail.

Usage:  ANYMAIL_SECRET=user:pass OUT_FILE=/path/out.jsonl python receiver.py PORT

Serves anymail's webhook urls under /anymail/ (SparkPost tracking webhook:
/anymail/sparkpost/tracking/) on 127.0.0.1:PORT with a threaded wsgiref server.
PORT 0 picks a free port. Prints "listening on PORT" (the real port) once ready.
Each event delivered by anymail's `tracking` signal is appended to OUT_FILE as
one JSON line, flushed immediately.
"""

import json
import os
import socketserver
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import django
from django.conf import settings
from django.urls import include, path

settings.configure(
    DEBUG=False,
    SECRET_KEY="anymail-e2e-receiver-not-secret",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    DATABASES={},
    INSTALLED_APPS=["anymail"],
    MIDDLEWARE=[],
    USE_TZ=True,
    ANYMAIL={"WEBHOOK_SECRET": os.environ["ANYMAIL_SECRET"]},
    LOGGING={
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"stderr": {"class": "logging.StreamHandler"}},
        "loggers": {"django": {"handlers": ["stderr"], "level": "WARNING"}},
    },
)
django.setup()

from anymail.signals import tracking  # noqa: E402  (needs settings)

urlpatterns = [path("anymail/", include("anymail.urls"))]

OUT_FILE = os.environ["OUT_FILE"]
_out_lock = threading.Lock()


def _esp_event_type(esp_event):
    """The ESP's own event "type", if esp_event is a dict that has one.

    SparkPost's esp_event is the raw wrapper {"msys": {event_class: {...}}},
    so look one (or two) levels down as well.
    """
    if not isinstance(esp_event, dict):
        return None
    if "type" in esp_event:
        return esp_event["type"]
    msys = esp_event.get("msys")
    if isinstance(msys, dict):
        for inner in msys.values():
            if isinstance(inner, dict) and "type" in inner:
                return inner["type"]
    return None


def record_tracking(sender, event, esp_name, **kwargs):
    line = {
        "esp_name": esp_name,
        "event_type": event.event_type,
        "esp_event_type": _esp_event_type(event.esp_event),
        "message_id": event.message_id,
        "recipient": event.recipient,
        "reject_reason": event.reject_reason,
        "description": event.description,
        "mta_response": event.mta_response,
        "tags": event.tags,
        "metadata": event.metadata,
        "click_url": event.click_url,
        "user_agent": event.user_agent,
        "timestamp": event.timestamp.isoformat() if event.timestamp else None,
        "event_id": event.event_id,
        # The SparkPost event as anymail received it, for checks of its raw fields.
        "esp_event": event.esp_event,
    }
    data = json.dumps(line, default=str) + "\n"
    with _out_lock:
        with open(OUT_FILE, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()


tracking.connect(record_tracking, weak=False, dispatch_uid="e2e-record-tracking")


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # access log to stderr, not stdout
        sys.stderr.write("%s - %s\n" % (self.address_string(), format % args))


def main():
    if len(sys.argv) != 2:
        sys.stderr.write("usage: receiver.py PORT\n")
        sys.exit(2)
    port = int(sys.argv[1])
    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()
    httpd = make_server(
        "127.0.0.1", port, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler
    )
    print("listening on %d" % httpd.server_address[1], flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
