#!/usr/bin/env python3
"""Verify a message's DKIM signature with python3-dkim (dkimpy), without DNS.

Usage: verify.py MESSAGE_FILE TXT_RECORD
Prints "pass" or "fail" and exits 0 or 1. The TXT record is served for any
<selector>._domainkey.<domain> the signature names.
"""
import sys

import dkim


def main():
    message = open(sys.argv[1], "rb").read()
    txt = sys.argv[2].encode()

    def dnsfunc(name, timeout=5):
        return txt

    ok = dkim.verify(message, dnsfunc=dnsfunc)
    print("pass" if ok else "fail")
    sys.exit(0 if ok else 1)


main()
