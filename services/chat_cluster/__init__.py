"""The ``chat-cluster`` command: run one service, or a whole local cluster."""
