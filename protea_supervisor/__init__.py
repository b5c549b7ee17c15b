"""protea-supervisor: run the PROTEA application stack under supervisord."""

__version__ = "0.1.0"
