"""`splitinfer COMMAND ...`: one console script over the parts' own CLIs.

Each command is the same as its `python -m ...` (which keeps working); the part is imported
only when its command runs, so `splitinfer edge` on a board never imports TensorFlow.
"""
from __future__ import annotations

import importlib
import sys

#: command -> (module with `main(argv)`, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("converter.__main__", "cut a Keras model into a bundle of heads and tails"),
    "profile": ("converter.profile", "accuracy and bytes of every (split, bits) of a bundle"),
    "device-profile": ("edge_runtime.profile", "head latencies of a bundle on this board"),
    "serve": ("cloud_runtime.serve", "serve a bundle's tails over HTTP(S)"),
    "edge": ("edge_runtime.__main__", "run heads on this board against a cloud"),
    "simulate": ("scheduler.simulate", "replay a policy over an uplink trace"),
    "demo": ("demo.__main__", "the whole pipeline, live, on the default model"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
    return f"usage: splitinfer COMMAND [ARGS...]\n\ncommands:\n{rows}\n\n" \
           "'splitinfer COMMAND --help' for a command's options."


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"splitinfer: error: unknown command {name!r}. Expected one of {sorted(COMMANDS)}.",
              file=sys.stderr)
        return 2
    module, _ = COMMANDS[name]
    try:
        entry = importlib.import_module(module).main
    except ImportError as e:  # an extra that this install lacks (TensorFlow on a board, say)
        print(f"splitinfer {name}: needs {e.name or 'a missing package'}; install the extra that "
              f"provides it (pip install 'splitinfer[edge|cloud|convert]')", file=sys.stderr)
        return 2
    return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
