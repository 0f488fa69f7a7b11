"""What a plain script does: one blocking dnspython MX query after another.

    python bench/sequential.py --server 127.0.0.1:5300 NAMES_FILE

NAMES_FILE holds one name a line. The script asks the server for each name's MX, waiting for
each answer before the next query, and prints how many names had an MX answer. The bench
times it as a whole process, start-up included, against `mxwatch --once` over the same names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import dns.resolver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="IP:PORT of the server to ask")
    parser.add_argument("names", type=Path, help="a file with one name a line")
    args = parser.parse_args()
    address, _, port = args.server.rpartition(":")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [address]
    resolver.port = int(port)
    resolver.lifetime = 3.0
    answered = 0
    for name in args.names.read_text().split():
        answer = resolver.resolve(name, "MX", raise_on_no_answer=False, search=False)
        answered += answer.rrset is not None
    print(answered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
