"""``python -m tilpheno``: the same command line as the ``tilpheno`` script (``tilpheno.launch.main``)."""

from tilpheno.launch import main

if __name__ == "__main__":
    main()
