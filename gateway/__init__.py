"""clerk-gateway: Clerk authentication in front of any HTTP service."""

__version__ = "0.1.0"
