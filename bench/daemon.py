"""`python -m bench.daemon --config FILE`: petcamd itself, its ICE host candidates pinned to 127.0.0.1."""

from __future__ import annotations

import sys

from bench.harness import pin_loopback_ice


def main() -> None:
    pin_loopback_ice()
    from petcamd.__main__ import main as petcamd_main

    sys.exit(petcamd_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
