"""One module per tab, each with ``render(services)`` and ``wire(handles, ...)``."""
