#!/usr/bin/env bash
# Usage: setup.sh DIR
# Installs the official SparkPost client libraries into DIR:
#   DIR/venv  python3 virtualenv with PyPI sparkpost==1.3.10 and requests
#   DIR/node  npm prefix with npm sparkpost@2.1.4
# Idempotent: each half is skipped when it is already installed.
# Needs network access (PyPI, npm, and Debian's archive if python3-venv or
# node/npm are missing).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
DIR=$1
PY_VERSION=1.3.10
NODE_VERSION=2.1.4
mkdir -p "$DIR"

apt_updated=
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$apt_updated" ]; then
        apt-get update -q
        apt_updated=1
    fi
    apt-get install -y -q "$@"
}

# --- python ---------------------------------------------------------------
VENV=$DIR/venv
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c \
    "import requests, sparkpost, sys; sys.exit(sparkpost.__version__ != '$PY_VERSION')" >/dev/null 2>&1; then
    echo "venv $VENV already has sparkpost $PY_VERSION"
else
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        rm -rf "$VENV"
        if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
            echo "python3 -m venv failed; installing python3-venv" >&2
            rm -rf "$VENV"
            pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
            apt_install python3-venv || apt_install "python${pyver}-venv"
            python3 -m venv "$VENV"
        fi
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "sparkpost==$PY_VERSION" requests
    "$VENV/bin/python" -c 'import sparkpost, requests; print("python sparkpost", sparkpost.__version__, "requests", requests.__version__)'
fi

# --- node -----------------------------------------------------------------
NODE_DIR=$DIR/node
node_installed_version() {
    [ -f "$NODE_DIR/node_modules/sparkpost/package.json" ] || return 0
    node -e 'const fs = require("fs"); process.stdout.write(String(JSON.parse(fs.readFileSync(process.argv[1], "utf8")).version))' \
        "$NODE_DIR/node_modules/sparkpost/package.json" 2>/dev/null || true
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "node or npm missing; installing nodejs npm" >&2
    apt_install nodejs npm
fi

if [ "$(node_installed_version)" = "$NODE_VERSION" ]; then
    echo "npm prefix $NODE_DIR already has sparkpost $NODE_VERSION"
else
    mkdir -p "$NODE_DIR"
    npm install --prefix "$NODE_DIR" --no-audit --no-fund "sparkpost@$NODE_VERSION"
    got=$(node_installed_version)
    if [ "$got" != "$NODE_VERSION" ]; then
        echo "npm sparkpost: expected $NODE_VERSION, got '${got}'" >&2
        exit 1
    fi
    echo "node sparkpost $got"
fi
