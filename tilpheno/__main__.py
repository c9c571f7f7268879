"""``python -m tilpheno``: the same command line as the ``tilpheno`` script (``tilpheno.cli.main``)."""

from tilpheno.cli import main

if __name__ == "__main__":
    main()
