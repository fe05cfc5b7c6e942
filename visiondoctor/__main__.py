"""`python -m visiondoctor` (and `torchrun -m visiondoctor train ...`)."""
import sys

from visiondoctor.cli import main

sys.exit(main())
