"""What both services share at the HTTP edge: the error type, its JSON shape, logging setup."""
