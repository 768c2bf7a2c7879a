"""`python cli.py ...` is the same as the `adaslot ...` console script."""

from adaslot.cli import main

if __name__ == "__main__":
    main()
