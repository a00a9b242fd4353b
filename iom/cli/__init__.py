"""The ``iomface`` command line: the parser (:mod:`iom.cli.parser`), the inputs checked before
any model loads (:mod:`iom.cli.request`, :mod:`iom.cli.inputs`), the commands
(:mod:`iom.cli.commands`, :mod:`iom.cli.loading`) and their output (:mod:`iom.cli.output`);
:func:`iom.cli.main.main` is the entry point."""
