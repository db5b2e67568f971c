"""The ``fusedoptim`` command (also ``python -m fusedoptim``)."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fusedoptim", description="Fused in-place optimizer kernels for CPU training.")
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser("demo", help="train a small network with every rule (the default)")
    demo.add_argument("--steps", type=int, default=30)
    commands.add_parser("config", help="show backends and ISA levels")
    args = parser.parse_args(argv)

    if args.command in (None, "demo"):
        from .demo import main as run_demo

        run_demo(steps=getattr(args, "steps", 30))
    elif args.command == "config":
        from . import show_config

        show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
