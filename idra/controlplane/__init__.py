"""The reference control plane: node API v1 over HTTPS, state in SQLite."""
