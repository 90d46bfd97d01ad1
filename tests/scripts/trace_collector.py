#!/usr/bin/env python3
"""zipkin_collector.py under a process name of the test's choosing, so that the Script
helpers can run it like the other test programs (and the spans the agent makes of the
collector's own traffic carry a known service name).

usage: trace_collector.py COMM [zipkin_collector.py options...]
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import sys  # noqa: E402

import zipkin_collector  # noqa: E402

if __name__ == "__main__":
    sys.argv = [sys.argv[0]] + sys.argv[2:]
    sys.exit(zipkin_collector.main())
