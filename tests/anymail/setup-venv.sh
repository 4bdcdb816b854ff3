#!/usr/bin/env bash
# Usage: setup-venv.sh DIR
# Creates a python3 virtualenv in DIR with django and django-anymail installed.
# Idempotent: does nothing if DIR/bin/python already imports anymail.
# Needs network access (PyPI, and Debian's archive if python3-venv is missing).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
DIR=$1

if [ -x "$DIR/bin/python" ] && "$DIR/bin/python" -c 'import django, anymail' >/dev/null 2>&1; then
    echo "venv $DIR already has django and anymail"
    exit 0
fi

if ! python3 -m venv "$DIR" >/dev/null 2>&1; then
    echo "python3 -m venv failed; installing python3-venv" >&2
    rm -rf "$DIR"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    apt-get install -y -q python3-venv || apt-get install -y -q "python${pyver}-venv"
    python3 -m venv "$DIR"
fi

# pip picks the newest releases whose Requires-Python matches this interpreter.
"$DIR/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$DIR/bin/python" -m pip install -q --disable-pip-version-check django django-anymail
"$DIR/bin/python" -c 'import django, anymail; print("django", django.get_version()); from anymail import VERSION; print("django-anymail", ".".join(map(str, VERSION)))'
