#!/usr/bin/env python3
"""Runs grpc_node.js (Node's @grpc/grpc-js) in place of this process, so that the tests start it
like any other script (`Script`): same arguments, same JSON lines, same process handling.

usage: grpc_node.py COMM server|client [options of grpc_node.js]

@grpc/grpc-js is found in $MESHTAP_NODE_MODULES, else /usr/local/lib/meshtap/node/node_modules
(where `cargo xtask setup` installs it, pinned). The node process names itself COMM.
"""

import os
import shutil
import sys

MODULES = os.environ.get("MESHTAP_NODE_MODULES", "/usr/local/lib/meshtap/node/node_modules")


def main():
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node not found on PATH (Debian package nodejs, or Node 20)")
    if not os.path.isdir(os.path.join(MODULES, "@grpc", "grpc-js")):
        raise SystemExit(f"@grpc/grpc-js is not installed in {MODULES}: run `cargo xtask setup`")
    env = dict(os.environ, NODE_PATH=MODULES)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpc_node.js")
    os.execve(node, [node, script, *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
