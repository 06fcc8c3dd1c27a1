"""One module per command: its arguments (``add_*``) and its work (``cmd_*``)."""
