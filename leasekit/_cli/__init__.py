"""Subcommands of the ``leasekit`` command, one module each."""
