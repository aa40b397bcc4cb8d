"""A chat node: serves reads from its own replica of the log; sends go through the log."""
