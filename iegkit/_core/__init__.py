"""Private core: the part protocol, the step context and compose()."""
