"""`python -m lab`: run the lab simulator."""

import sys

from lab.main import main

if __name__ == "__main__":
    sys.exit(main())
