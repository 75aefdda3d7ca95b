"""Background loops, one module each, on the shared ``rounds`` helper."""
