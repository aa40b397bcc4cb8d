"""The archiver: stateless REST over the log itself. It keeps no copy of the log in memory."""
