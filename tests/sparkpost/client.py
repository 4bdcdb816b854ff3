"""python-sparkpost (PyPI sparkpost 1.3.10), the real client, against msys-milter's API.

Usage: client.py COMMAND [ARG]; MSYS_API is host:port, MSYS_KEY the key,
REQUESTS_CA_BUNDLE the test CA. Prints {"ok": result} or
{"error": {"status": N, "errors": [...]}} as JSON.
"""
import json
import os
import sys

from sparkpost import SparkPost
from sparkpost.exceptions import SparkPostAPIException


def main():
    sp = SparkPost(os.environ["MSYS_KEY"], base_uri=os.environ["MSYS_API"])
    command, arg = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    if command == "create":
        # The old boolean form, as python-sparkpost's documentation shows it.
        result = sp.suppression_list.create(
            {"email": arg, "non_transactional": True, "description": "python-sparkpost"})
    elif command == "create-many":
        result = sp.suppression_list.create([
            {"recipient": r, "type": "transactional", "description": "bulk"}
            for r in arg.split(",")])
    elif command == "get":
        result = sp.suppression_list.get(arg)
    elif command == "list":
        result = sp.suppression_list.list(types="non_transactional", limit=100)
    elif command == "delete":
        result = sp.suppression_list.delete(arg)
    elif command == "campaigns":
        result = sp.metrics.campaigns.list(params={"from": arg})
    elif command == "domains":
        result = sp.metrics.domains.list(params={"from": arg})
    else:
        raise SystemExit("unknown command " + command)
    print(json.dumps({"ok": result}))


try:
    main()
except SparkPostAPIException as e:
    print(json.dumps({"error": {"status": e.status, "errors": e.errors}}))
