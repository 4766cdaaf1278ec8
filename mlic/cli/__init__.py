"""The command line: one module per tool of tools/, each with a main(argv) that parses the
flags, calls the library and turns its errors into an exit status (mlic.cli.common); the
library raises and never exits."""
