"""The ``fusedoptim`` command (also ``python -m fusedoptim``).

A bad ``$FUSEDOPTIM_*`` variable stops the command before this module runs (it is read when the
package imports): ``fusedoptim._env`` says so in one line.
"""

import argparse
import sys

from . import __version__


def positive_int(text):
    """argparse's type of a count that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fusedoptim",
                                     description="Fused in-place optimizer kernels for CPU training.")
    parser.add_argument("--version", action="version", version=f"fusedoptim {__version__}")
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser("demo", help="train a small network with every rule (the default)")
    demo.add_argument("--steps", type=positive_int, default=30, help="training steps per rule (default: 30)")
    commands.add_parser("config", help="show versions, backends, ISA levels and threads")
    bench = commands.add_parser("bench", help="time one step of every rule: backends, ISA levels, threads, torch, "
                                              "the memory-bandwidth roof")
    from .bench import add_arguments

    add_arguments(bench)
    args = parser.parse_args(argv)

    if args.command in (None, "demo"):
        from .demo import main as run_demo

        run_demo(steps=getattr(args, "steps", 30))
    elif args.command == "config":
        from . import show_config

        show_config()
    elif args.command == "bench":
        from .bench import command

        return command(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
