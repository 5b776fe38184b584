"""Fine-tune a timm model on EuroSAT: ``accelerate launch train.py [flags]`` (``--help`` lists them)."""

import sys

from landcover.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
