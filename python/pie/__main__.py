"""``python -m pie``: package-level commands (currently ``selftest``)."""

from __future__ import annotations

import argparse
import json
import sys

from .selftest import run_selftest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pie", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser(
        "selftest",
        help="check the native build: AES path and known answers, SHA-256, SEAL, OpenSSL",
    )
    st.add_argument("--json", action="store_true", help="print a JSON report instead of a table")
    args = parser.parse_args(argv)

    report = run_selftest()
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
